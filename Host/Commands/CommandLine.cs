using System.CommandLine;
using System.CommandLine.Help;
using System.CommandLine.Invocation;
using ActorBlk.Hardware.Devices;
using ActorBlk.Host.Bench;

namespace ActorBlk.Host.Commands;

/// <summary>A command-line option was missing, unknown or malformed.</summary>
public sealed class UsageException(string message) : Exception(message);

/// <summary>A command could not do its work (a node or device that did not appear, a file that cannot be written): exit code 1, the message on stderr.</summary>
public sealed class CommandFailedException(string message) : Exception(message);

/// <summary>
/// The <c>actorblk</c> command line, parsed by System.CommandLine: one sub-command per tool, each
/// with <c>--help</c>; options as <c>--name=value</c> or <c>--name value</c>; a misspelt option or
/// command gets suggestions; the <c>[suggest]</c> directive answers shell completion (dotnet-suggest).
/// Exit codes: 0 success, 1 failure, 2 usage error, and a command's own (bench's 3 for a lost I/O).
/// </summary>
internal static class CommandLine
{
    /// <summary>Exit code of a usage error: a missing, unknown or malformed option or argument.</summary>
    public const int UsageError = 2;

    /// <summary>The root command with every sub-command; <c>iostat</c> reports to <paramref name="output"/>.</summary>
    public static RootCommand Create(TextWriter output)
    {
        var root = new RootCommand("actorblk: a user-space multi-queue block layer on Akka.NET")
        {
            ServeCommand.Create(),
            DevicesCommand.Create(),
            new BenchCommandLine().Create(BenchCommand.RunAsync),
            SysfsCommand.CreateSysfs(),
            SysfsCommand.CreateHotplug(),
            IostatCommand.Create(output),
        };

        // sysstat's iostat takes -h (human readable), which System.CommandLine's help option, one
        // for the whole tree, takes everywhere: each command has its own help option instead, and
        // iostat's lacks -h (its help is --help, or -?).
        root.Options.OfType<HelpOption>().Single().Recursive = false;
        foreach (var command in root.Subcommands)
        {
            var help = new HelpOption();
            if (command.Name == "iostat")
            {
                help.Aliases.Remove("-h");
            }

            command.Options.Add(help);
        }

        return root;
    }

    /// <summary>
    /// Parses and runs <paramref name="args"/>. Parse errors (with suggestions) and usage errors go to
    /// <paramref name="error"/> and return <see cref="UsageError"/>; help goes to <paramref name="output"/>.
    /// </summary>
    public static async Task<int> RunAsync(IReadOnlyList<string> args, TextWriter output, TextWriter error)
    {
        ArgumentNullException.ThrowIfNull(args);
        var root = Create(output);
        if (args.Count > 0 && args[0].StartsWith("[suggest", StringComparison.Ordinal))
        {
            // The shell-completion directive: System.CommandLine threw on a position that is not a
            // number of 0 or more ("[suggest:-1]" printed a stack trace; an outside CLI fuzz).
            if (args[0].StartsWith("[suggest:", StringComparison.Ordinal)
                && !(args[0].EndsWith(']') && int.TryParse(args[0].AsSpan(9, args[0].Length - 10), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out _)))
            {
                await error.WriteLineAsync($"actorblk: '{args[0]}': the completion directive's position is a number of 0 or more ([suggest:N]).").ConfigureAwait(false);
                return UsageError;
            }

            CliOptions.OneValueEach(root);
        }
        var invocation = new InvocationConfiguration
        {
            Output = output,
            Error = error,

            // Exceptions are the commands' to report (below); and serve stops on SIGTERM through the
            // generic host's coordinated shutdown, not through the parser's cancellation.
            EnableDefaultExceptionHandler = false,
            ProcessTerminationTimeout = null,
        };

        if (args.Count == 0)
        {
            await root.Parse(["--help"]).InvokeAsync(invocation).ConfigureAwait(false);
            return UsageError;
        }

        // `actorblk help [COMMAND]` as `actorblk [COMMAND] --help`; help for a command that does
        // not exist is a usage error, not the main help with success.
        if (args[0] == "help" && args.Count > 1 && !root.Subcommands.Any(c => c.Name == args[1] || c.Aliases.Contains(args[1])))
        {
            await error.WriteLineAsync($"actorblk: '{args[1]}' is not a command; the commands are {string.Join(", ", root.Subcommands.Where(c => !c.Hidden).Select(c => c.Name))}.").ConfigureAwait(false);
            return UsageError;
        }

        // fio reads its options with getopt_long_only: -rw=randread is --rw=randread.
        if (args[0] == "bench")
        {
            args = [args[0], .. BenchCommandLine.LongOnly(root.Subcommands.Single(c => c.Name == "bench"), args.Skip(1))];
        }

        var parse = args[0] == "help" ? root.Parse([.. args.Skip(1), "--help"]) : root.Parse(args);
        if (parse.Errors.Count > 0)
        {
            // The errors and the typo suggestions; the whole help would push them off the screen.
            if (parse.Action is ParseErrorAction errorAction)
            {
                errorAction.ShowHelp = false;
            }

            // Suggestions are written to the invocation's output: here they belong with the errors, on stderr.
            await parse.InvokeAsync(new InvocationConfiguration { Output = error, Error = error, ProcessTerminationTimeout = null }).ConfigureAwait(false);
            await error.WriteLineAsync($"See '{HelpCommandOf(parse)} --help'.").ConfigureAwait(false);
            return UsageError;
        }

        try
        {
            return await parse.InvokeAsync(invocation).ConfigureAwait(false);
        }
        catch (StandardOutputException ex) when (ex.BrokenPipe)
        {
            // The reader of stdout went away (`actorblk iostat 1 | head -3`): a quiet end, as SIGPIPE
            // ends sysstat's iostat and fio. .NET drops the EPIPE of a console write, so iostat wrote
            // its reports into the closed pipe for ever.
            return StandardOutput.BrokenPipeExit;
        }
        catch (StandardOutputException ex)
        {
            // stdout is /dev/full or closed: one line, as coreutils' close_stdout ("write error: No
            // space left on device"), not "failed:" and a stack trace.
            await error.WriteLineAsync($"actorblk: write error: {ex.Message}").ConfigureAwait(false);
            return 1;
        }
        catch (UsageException ex)
        {
            await error.WriteLineAsync($"actorblk: {ex.Message}").ConfigureAwait(false);
            await error.WriteLineAsync($"See '{HelpCommandOf(parse)} --help'.").ConfigureAwait(false);
            return UsageError;
        }
        catch (DeviceOptionsException ex) when (ex.InnerException is BlockDeviceException or ActorBlk.Actors.Clustering.ClusterDeviceNotFoundException)
        {
            // Options that name a device that could not be opened or did not appear (a mirror's
            // member on another node): a failure (1), as README's exit codes have it, not a usage error.
            await error.WriteLineAsync($"actorblk: {ex.Message}").ConfigureAwait(false);
            return 1;
        }
        catch (DeviceOptionsException ex)
        {
            await error.WriteLineAsync($"actorblk: {ex.Message}").ConfigureAwait(false);
            return UsageError;
        }
        catch (BlockDeviceOpenException ex)
        {
            await error.WriteLineAsync($"actorblk: {ex.Message}").ConfigureAwait(false);
            return 1;
        }
        catch (Exception ex) when (ex is CommandFailedException or ActorBlk.Actors.Serialization.AdminSecretException or ActorBlk.Actors.Clustering.ClusterDeviceNotFoundException)
        {
            await error.WriteLineAsync($"actorblk: {ex.Message}").ConfigureAwait(false);
            return 1;
        }
        catch (ActorBlk.Hardware.Devices.BlockDeviceException ex)
        {
            // A device the command could not assemble or open (a mirror whose legs disagree, say).
            await error.WriteLineAsync($"actorblk: {ex.Message}").ConfigureAwait(false);
            return 1;
        }
        catch (Exception ex) when (ex is Akka.Configuration.ConfigurationException or FormatException)
        {
            // A configuration value that does not parse (actorblk.drain-timeout = banana) or is out
            // of range: the settings' reader names the key; Akka's own getters give the text.
            await error.WriteLineAsync($"actorblk: configuration: {ex.Message}").ConfigureAwait(false);
            return UsageError;
        }
#pragma warning disable CA1031 // the last resort of the command line: a failure, never an abort
        catch (Exception ex)
#pragma warning restore CA1031
        {
            // Anything else is a failure (1) with its stack trace, as README promises; unhandled, it
            // aborted the process (exit 134, "Unhandled exception", an outside audit under a low
            // open-file limit, where the runtime could not load an assembly).
            await error.WriteLineAsync($"actorblk: failed: {ex}").ConfigureAwait(false);
            return 1;
        }
    }

    // "actorblk sysfs write" for a parse of `sysfs write ...`.
    private static string HelpCommandOf(ParseResult parse)
    {
        var names = new List<string>();
        for (var result = parse.CommandResult; result is not null; result = result.Parent as System.CommandLine.Parsing.CommandResult)
        {
            names.Add(result.Command is RootCommand ? "actorblk" : result.Command.Name);
        }

        names.Reverse();
        return string.Join(' ', names);
    }
}

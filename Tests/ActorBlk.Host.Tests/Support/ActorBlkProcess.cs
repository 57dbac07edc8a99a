using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using System.Threading.Channels;

namespace ActorBlk.Host.Tests.Support;

/// <summary>The `actorblk` command run as a child process, its output read line by line.</summary>
public sealed partial class ActorBlkProcess : IAsyncDisposable
{
    private const int SigTerm = 15;

    private readonly Process _process;
    private readonly Channel<string> _lines = Channel.CreateUnbounded<string>();
    private readonly StringBuilder _all = new();
    private readonly StringBuilder _stdout = new();
    private readonly StringBuilder _stderr = new();
    private readonly Task _pump;

    // A test run started as a shell's background job without job control (`(dotnet test &)`,
    // nohup) ignores SIGINT and SIGQUIT, and a child inherits that: the .NET runtime then keeps
    // them ignored, so the specs that send Ctrl-C (BenchSignalSpec, MirrorJournalSampleSpec) waited
    // out their patience and failed. Such a run starts its children through `env
    // --default-signal` (coreutils 8.31), as a terminal would start them; other runs as before.
    // nohup ignores SIGHUP as well: ServeHangupSpec's node never saw its hang-up and the spec
    // failed after 90 s (a loaded run under nohup); SIGHUP is given back its default too.
    private static readonly bool InheritsIgnoredInterrupt = IgnoresInterrupt();

    private static bool IgnoresInterrupt()
    {
        try
        {
            var line = File.ReadLines("/proc/self/status").FirstOrDefault(l => l.StartsWith("SigIgn:", StringComparison.Ordinal));
            return line is not null
                && (ulong.Parse(line["SigIgn:".Length..].Trim(), System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture) & 0b111) != 0; // SIGHUP, SIGINT, SIGQUIT
        }
        catch (Exception ex) when (ex is IOException or FormatException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    private ActorBlkProcess(Process process)
    {
        _process = process;
        _pump = Task.WhenAll(Pump(process.StandardOutput, _stdout), Pump(process.StandardError, _stderr));
    }

    /// <summary>Everything the process printed so far.</summary>
    public string Output
    {
        get
        {
            lock (_all)
            {
                return _all.ToString();
            }
        }
    }

    /// <summary>What the process printed on stdout alone.</summary>
    public string StandardOutput
    {
        get
        {
            lock (_all)
            {
                return _stdout.ToString();
            }
        }
    }

    /// <summary>What the process printed on stderr alone.</summary>
    public string StandardError
    {
        get
        {
            lock (_all)
            {
                return _stderr.ToString();
            }
        }
    }

    /// <summary>Starts `dotnet actorblk.dll args...` from the test's output directory.</summary>
    public static ActorBlkProcess Start(params string[] args) => StartProgram("actorblk.dll", args);

    /// <summary>Starts `dotnet actorblk.dll args...` with <paramref name="environment"/> set (a null value removes the variable).</summary>
    public static ActorBlkProcess StartWithEnvironment(IReadOnlyDictionary<string, string?> environment, params string[] args) =>
        StartProgram("actorblk.dll", args, environment);

    /// <summary>Starts `dotnet PROGRAM args...`: PROGRAM a name in the specs' output directory, or a full path (<see cref="RepositoryFiles.Sample"/>).</summary>
    public static ActorBlkProcess StartProgram(string program, params string[] args) => StartProgram(program, args, null);

    private static ActorBlkProcess StartProgram(string program, string[] args, IReadOnlyDictionary<string, string?>? environment)
    {
        var dll = Path.Combine(AppContext.BaseDirectory, program);
        var info = new ProcessStartInfo(InheritsIgnoredInterrupt ? "env" : "dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = AppContext.BaseDirectory,
        };
        foreach (var (name, value) in environment ?? new Dictionary<string, string?>())
        {
            if (value is null)
            {
                info.Environment.Remove(name);
            }
            else
            {
                info.Environment[name] = value;
            }
        }

        if (InheritsIgnoredInterrupt)
        {
            // exec'd in place: the process id stays the child's.
            info.ArgumentList.Add("--default-signal=HUP,INT,QUIT");
            info.ArgumentList.Add("dotnet");
        }

        info.ArgumentList.Add(dll);
        foreach (var a in args)
        {
            info.ArgumentList.Add(a);
        }

        return new ActorBlkProcess(Process.Start(info) ?? throw new InvalidOperationException("dotnet did not start."));
    }

    /// <summary>Reads lines until one matches; fails when the process ends or the time is up.</summary>
    public async Task<string> WaitForLineAsync(Func<string, bool> match, TimeSpan within)
    {
        using var cts = new CancellationTokenSource(within);
        try
        {
            await foreach (var line in _lines.Reader.ReadAllAsync(cts.Token))
            {
                if (match(line))
                {
                    return line;
                }
            }
        }
        catch (OperationCanceledException)
        {
        }

        throw new TimeoutException($"No matching line within {within}. Output so far:\n{Output}");
    }

    /// <summary>Sends SIGTERM, as a service manager or Ctrl-C would.</summary>
    public void Terminate() => Signal(SigTerm);

    /// <summary>Sends signal <paramref name="signal"/> (2: SIGINT, Ctrl-C; 15: SIGTERM).</summary>
    public void Signal(int signal)
    {
        if (Kill(_process.Id, signal) != 0)
        {
            throw new InvalidOperationException($"kill({_process.Id}, {signal}) failed: errno {Marshal.GetLastPInvokeError()}.");
        }
    }

    /// <summary>
    /// Lowers the process's soft <c>RLIMIT_FSIZE</c> to <paramref name="bytes"/> (<c>ulimit -f</c>
    /// on a running process, with prlimit(2)); the hard limit stays.
    /// </summary>
    public unsafe void LimitFileSize(long bytes)
    {
        var limits = stackalloc ulong[2];
        if (PrLimit(_process.Id, RlimitFsize, null, limits) != 0)
        {
            throw new InvalidOperationException($"prlimit({_process.Id}) failed: errno {Marshal.GetLastPInvokeError()}.");
        }

        limits[0] = (ulong)bytes;
        if (PrLimit(_process.Id, RlimitFsize, limits, null) != 0)
        {
            throw new InvalidOperationException($"prlimit({_process.Id}, {bytes}) failed: errno {Marshal.GetLastPInvokeError()}.");
        }
    }

    /// <summary>SIGKILL: the process dies at once, with no shutdown of any kind (the kernel closes its sockets).</summary>
    public async Task KillAsync()
    {
        _process.Kill(entireProcessTree: true);
        await _process.WaitForExitAsync();
    }

    /// <summary>
    /// Waits for the exit code, and for the output to its end (a descendant that kept the output
    /// pipes open would hold that end), both within <paramref name="within"/>.
    /// </summary>
    public async Task<int> WaitForExitAsync(TimeSpan within)
    {
        using var cts = new CancellationTokenSource(within);
        await _process.WaitForExitAsync(cts.Token);
        await _pump.WaitAsync(cts.Token);
        return _process.ExitCode;
    }

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            await _process.WaitForExitAsync();
        }

        _process.Dispose();
    }

    private async Task Pump(StreamReader reader, StringBuilder? only)
    {
        while (await reader.ReadLineAsync() is { } line)
        {
            lock (_all)
            {
                _all.AppendLine(line);
                only?.AppendLine(line);
            }

            await _lines.Writer.WriteAsync(line);
        }
    }

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);

    private const int RlimitFsize = 1;

    [LibraryImport("libc", EntryPoint = "prlimit", SetLastError = true)]
    private static unsafe partial int PrLimit(int pid, int resource, ulong* newLimit, ulong* oldLimit);
}

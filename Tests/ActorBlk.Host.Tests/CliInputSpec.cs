using ActorBlk.Host.Tests.Support;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// Operator input an outside audit found aborting the CLI (SIGABRT, exit 134) or ignored: a
/// configuration value that does not parse, an HOCON include, a malformed --node, and --node
/// HOST:PORT for sysfs and hotplug (taken as an address and never answered).
/// </summary>
public sealed class CliInputSpec : IDisposable
{
    private static readonly TimeSpan Within = TimeSpan.FromSeconds(120);

    private readonly string _dir = Directory.CreateTempSubdirectory("actorblk-cli-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Theory]
    [InlineData("actorblk.drain-timeout = banana", "actorblk.drain-timeout: 'banana' is not a duration")]
    [InlineData("actorblk.supervision.max-resets = x", "actorblk.supervision.max-resets: 'x' is not a whole number")]
    [InlineData("actorblk.topology.source = simulatd", "actorblk.topology.source: 'simulatd' is not 'system' or 'simulated'")]
    // Akka reads its log levels only as the actor system starts: this failed the start with its
    // ArgumentException and some 40 stack lines, exit 1 (an outside CLI fuzzing audit).
    [InlineData("akka.loglevel = BANANA", "actorblk: configuration: akka.loglevel: 'BANANA' is not DEBUG, INFO, WARNING, ERROR or OFF.")]
    [InlineData("akka.stdout-loglevel = [INFO]", "actorblk: configuration: akka.stdout-loglevel: a value is expected (DEBUG, INFO, WARNING, ERROR or OFF), not a list [ ... ].")]
    public async Task A_setting_that_does_not_parse_is_a_usage_error_naming_the_key(string line, string message)
    {
        var config = Path.Combine(_dir, "bad.conf");
        File.WriteAllText(config, $"akka.remote.dot-netty.tcp.port = 0\nactorblk.nbd.listen = off\n{line}\n");
        await using var serve = ActorBlkProcess.Start("serve", "--config", config);
        Assert.Equal(2, await serve.WaitForExitAsync(Within));
        Assert.Contains(message, serve.Output, StringComparison.Ordinal);
        Assert.DoesNotContain("Unhandled exception", serve.Output, StringComparison.Ordinal);
    }

    // Akka's keys that serve reads before the actor system starts (ConfigNullSpec has every one):
    // Akka reads null (and a list or a section) as no value, and so did serve. With TLS on, a null
    // hostname bound every interface as "" does; a null public-port was taken for
    // unset, a null provider for no provider. TLS is on and without a certificate here, so a node
    // that let the key through stops at its certificate (exit 2, another message) rather than start.
    // A control character in a name or a host name is refused the same way (it reached the log).
    [Theory]
    [InlineData("akka.remote.dot-netty.tcp.hostname = null", "akka.remote.dot-netty.tcp.hostname: null is not a value here; remove the key for the default (every interface).")]
    [InlineData("akka.remote.dot-netty.tcp.public-hostname = null", "akka.remote.dot-netty.tcp.public-hostname: null is not a value here; remove the key for the default (the hostname).")]
    [InlineData("akka.remote.dot-netty.tcp.public-port = null", "akka.remote.dot-netty.tcp.public-port: null is not a value here; remove the key for the default (the port).")]
    [InlineData("akka.remote.dot-netty.tcp.maximum-frame-size = null", "akka.remote.dot-netty.tcp.maximum-frame-size: null is not a value here; remove the key for the default (128000b).")]
    [InlineData("akka.remote.dot-netty.tcp.maximum-frame-size = 1000b", "akka.remote.dot-netty.tcp.maximum-frame-size: 1000 bytes is not a frame size Akka.Remote takes (32000 to 2147483647 bytes).")]
    [InlineData("akka.remote.dot-netty.tcp.maximum-frame-size = 4g", "akka.remote.dot-netty.tcp.maximum-frame-size: 4294967296 bytes is not a frame size Akka.Remote takes (32000 to 2147483647 bytes).")]
    [InlineData("akka.remote.dot-netty.tcp.ssl.certificate.path = null", "akka.remote.dot-netty.tcp.ssl.certificate.path: null is not a value here; remove the key for the default (none).")]
    [InlineData("akka.remote.dot-netty.tcp.ssl.certificate.password = null", "akka.remote.dot-netty.tcp.ssl.certificate.password: null is not a value here; remove the key for the default (none).")]
    [InlineData("akka.scheduler.shutdown-timeout = null", "akka.scheduler.shutdown-timeout: null is not a value here; remove the key for the default (5s).")]
    [InlineData("akka.cluster.distributed-data.gossip-interval = null", "akka.cluster.distributed-data.gossip-interval: null is not a value here; remove the key for the default (2s).")]
    [InlineData("akka.actor.provider = null", "akka.actor.provider: null is not a value here; remove the key for the default (cluster).")]
    [InlineData("akka.loglevel = null", "akka.loglevel: null is not a value here; remove the key for the default (INFO).")]
    [InlineData("akka.remote.dot-netty.tcp.hostname = \"127.0.0.1\\n[forged]\"", "akka.remote.dot-netty.tcp.hostname: '127.0.0.1\\x0a[forged]' holds a control character (U+000A), which this key never takes.")]
    [InlineData("actorblk.devices = [{ name = \"d\\u001b[2Jx\" }]", "actorblk: device 'd\\x1b[2Jx': option 'name': 'd\\x1b[2Jx' holds a control character (U+001B), which this key never takes.")]
    public async Task An_akka_key_ActorBlk_reads_refuses_null_and_control_characters_naming_the_key(string line, string message)
    {
        var config = Path.Combine(_dir, "akka.conf");
        File.WriteAllText(config, $"akka.remote.dot-netty.tcp {{ port = 0, hostname = 127.0.0.1, enable-ssl = on }}\nactorblk.nbd.listen = off\n{line}\n");
        await using var serve = ActorBlkProcess.Start("serve", "--config", config);
        Assert.Equal(2, await serve.WaitForExitAsync(Within));
        Assert.Contains(message, serve.Output, StringComparison.Ordinal);
        Assert.DoesNotContain("Unhandled exception", serve.Output, StringComparison.Ordinal);
    }

    // An outside CLI fuzzing audit: an unknown option where the path stands was sent to the node as
    // the path ("no ActorBlk node answered", exit 1) instead of being a usage error.
    [Theory]
    [InlineData("list", "--bogus")]
    [InlineData("cat", "--verbose")]
    [InlineData("write", "-x", "1")]
    public async Task An_unknown_option_where_the_attribute_path_stands_is_a_usage_error(params string[] args)
    {
        await using var sysfs = ActorBlkProcess.Start(["sysfs", .. args, "--port", "1"]);
        Assert.Equal(2, await sysfs.WaitForExitAsync(Within));
        Assert.Contains($"Unrecognized command or argument '{args[1]}' (an attribute path never starts with '-').", sysfs.Output, StringComparison.Ordinal);
        Assert.DoesNotContain("no ActorBlk node answered", sysfs.Output, StringComparison.Ordinal);
    }

    // The same audit: the brackets of an IPv6 address were trimmed whichever were there, and an
    // unbracketed one had its last group read as the port.
    [Theory]
    [InlineData("[::1:5")]
    [InlineData("::1]:5")]
    [InlineData("::1:10809")]
    [InlineData("[[::1]]:5")]
    [InlineData("[127.0.0.1]:5")]
    public void An_nbd_listen_address_with_stray_or_missing_brackets_is_refused(string listen)
    {
        var refused = Assert.Throws<Akka.Configuration.ConfigurationException>(() => ActorBlk.Actors.Nbd.NbdExportSettings.ParseListen(listen));
        Assert.Contains($"actorblk.nbd.listen: '{listen}' is not ADDRESS:PORT", refused.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("[::1]:5", "[::1]:5")]
    [InlineData("127.0.0.1:10809", "127.0.0.1:10809")]
    [InlineData("0.0.0.0:0", "0.0.0.0:0")]
    public void An_nbd_listen_address_in_the_documented_forms_is_taken(string listen, string endpoint) =>
        Assert.Equal(endpoint, ActorBlk.Actors.Nbd.NbdExportSettings.ParseListen(listen)!.ToString());

    [Fact]
    public async Task A_configuration_may_include_a_file_next_to_it()
    {
        File.WriteAllText(Path.Combine(_dir, "base.conf"), "akka.remote.dot-netty.tcp.port = 1\n");
        var config = Path.Combine(_dir, "node.conf");
        File.WriteAllText(config, "include \"base.conf\"\n");
        await using var sysfs = ActorBlkProcess.Start("sysfs", "list", "--config", config);
        Assert.Equal(1, await sysfs.WaitForExitAsync(Within));
        Assert.Contains("no ActorBlk node answered at akka.tcp://actorblk@127.0.0.1:1 ", sysfs.Output, StringComparison.Ordinal);

        File.WriteAllText(config, "include \"missing.conf\"\n");
        await using var missing = ActorBlkProcess.Start("sysfs", "list", "--config", config);
        Assert.Equal(2, await missing.WaitForExitAsync(Within));
        Assert.Contains("missing.conf", missing.Output, StringComparison.Ordinal);
        Assert.DoesNotContain("Unhandled exception", missing.Output, StringComparison.Ordinal);
    }

    // An operator audit pointed iostat at a node's NBD port: the command's own line came after an
    // Akka ERROR with DotNetty's TooLongFrameException and its 7-line stack trace on stderr.
    [Fact]
    public async Task A_port_that_is_not_ActorBlk_remoting_gets_one_line_on_stderr()
    {
        // Speaks first, as an NBD server does: the greeting's first four bytes read as a frame
        // length of about 1.3 GB, over the 128,000 allowed.
        using var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        using var stop = new CancellationTokenSource();
        var greetings = 0;
        var greeter = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                using var client = await listener.AcceptTcpClientAsync(stop.Token);
                try
                {
                    await client.GetStream().WriteAsync("NBDMAGICIHAVEOPT\0\u0003"u8.ToArray(), stop.Token);
                    Interlocked.Increment(ref greetings);
                }
                catch (IOException)
                {
                    // The client closed first.
                }
            }
        });

        var port = ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
        await using var devices = ActorBlkProcess.Start("devices", "--node", $"127.0.0.1:{port}");
        Assert.Equal(1, await devices.WaitForExitAsync(Within));
        var line = Assert.Single(devices.StandardError.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
        Assert.StartsWith($"actorblk: no ActorBlk node answered at akka.tcp://actorblk@127.0.0.1:{port}", line, StringComparison.Ordinal);
        Assert.Empty(devices.StandardOutput);
        Assert.True(Volatile.Read(ref greetings) > 0, "the command never connected, so nothing was tested");
        await stop.CancelAsync();
        listener.Stop();
        await Assert.ThrowsAnyAsync<Exception>(() => greeter);
    }

    // A review: the client commands read the admin secret at start, so a user who may not read
    // the secret file could not run iostat or devices, which send no secret. Only writes and
    // hotplug read it now. (A directory at the path stands for a file the user may not read.)
    [Fact]
    public async Task Reading_commands_do_not_read_the_admin_secret_and_a_write_names_the_file_it_cannot_read()
    {
        var secret = Path.Combine(_dir, "admin-secret");
        Directory.CreateDirectory(secret);
        var config = Path.Combine(_dir, "node.conf");
        File.WriteAllText(config, $"akka.remote.dot-netty.tcp.port = 1\nactorblk.remote.admin-secret-file = \"{secret}\"\n");

        await using var devices = ActorBlkProcess.Start("sysfs", "cat", "uptime", "--config", config);
        Assert.Equal(1, await devices.WaitForExitAsync(Within));
        Assert.Contains("no ActorBlk node answered at akka.tcp://actorblk@127.0.0.1:1 ", devices.Output, StringComparison.Ordinal);
        Assert.DoesNotContain("admin secret", devices.Output, StringComparison.Ordinal);

        await using var write = ActorBlkProcess.Start("sysfs", "write", "block/nullb0/queue/nomerges", "1", "--config", config);
        Assert.Equal(1, await write.WaitForExitAsync(Within));
        Assert.Contains($"the admin secret file '{secret}' (actorblk.remote.admin-secret-file) cannot be read", write.Output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Help_for_a_command_that_does_not_exist_is_a_usage_error()
    {
        await using var help = ActorBlkProcess.Start("help", "nosuchcommand");
        Assert.Equal(2, await help.WaitForExitAsync(Within));
        Assert.Contains("'nosuchcommand' is not a command; the commands are serve, devices, bench", help.Output, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("iostat")]
    [InlineData("sysfs")]
    [InlineData("hotplug")]
    [InlineData("devices")]
    public async Task Node_takes_host_and_port_or_an_address_and_refuses_anything_else(string command)
    {
        string[] rest = command switch
        {
            "iostat" => ["1", "1"],
            "sysfs" => ["list"],
            "hotplug" => ["online", "1"],
            _ => [],
        };
        string[] Args(string node) => command == "sysfs" ? ["sysfs", "list", "--node", node] : command == "hotplug" ? ["hotplug", "online", "1", "--node", node] : [command, .. rest, "--node", node];

        foreach (var bad in new[] { "nonsense", "127.0.0.1:99999", "akka.tcp://x@" })
        {
            await using var refused = ActorBlkProcess.Start(Args(bad));
            Assert.Equal(2, await refused.WaitForExitAsync(Within));
            Assert.Contains("option --node", refused.Output, StringComparison.Ordinal);
            Assert.DoesNotContain("Unhandled exception", refused.Output, StringComparison.Ordinal);
        }

        // HOST:PORT is the node at akka.tcp://actorblk@HOST:PORT (none listens on port 1).
        await using var hostPort = ActorBlkProcess.Start(Args("127.0.0.1:1"));
        Assert.Equal(1, await hostPort.WaitForExitAsync(Within));
        Assert.Contains("akka.tcp://actorblk@127.0.0.1:1", hostPort.Output, StringComparison.Ordinal);
    }
}

using System.Net.Sockets;
using ActorBlk.Actors.Nbd;
using ActorBlk.Hardware.Devices;
using ActorBlk.Testing;
using Akka.Actor;
using Akka.Configuration;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests.Nbd;

/// <summary>
/// <c>actorblk.nbd.listen = "unix:PATH"</c>: the forms it takes and refuses, and a node's export
/// on a Unix socket, which the export actor reports and coordinated shutdown removes.
/// </summary>
public sealed class NbdExportUnixSocketSpec : Akka.TestKit.Xunit2.TestKit
{
    private static readonly Config Node = ConfigurationFactory.ParseString("""
        akka.loglevel = WARNING
        actorblk.topology { source = simulated, simulated.cpus = 2 }
        """);

    public NbdExportUnixSocketSpec(ITestOutputHelper output)
        : base(Node, output: output)
    {
    }

    private static NbdExportSettings Settings(string listen) =>
        NbdExportSettings.Create(ConfigurationFactory.ParseString($"actorblk.nbd.listen = \"{listen}\""));

    [Fact]
    public void Unix_and_a_path_or_an_abstract_name_is_a_unix_socket_and_not_off()
    {
        var settings = Settings("unix:/run/actorblk/nbd.sock");
        Assert.Equal((null, "/run/actorblk/nbd.sock", false), (settings.Listen, settings.UnixSocket, settings.IsOff));
        var options = settings.ToServerOptions();
        Assert.Equal("/run/actorblk/nbd.sock", options.UnixSocket);
        options.Validate();

        Assert.Equal("@actorblk-nbd", Settings("unix:@actorblk-nbd").UnixSocket);
        Assert.True(Settings("off").IsOff);
        Assert.Throws<InvalidOperationException>(() => Settings("off").ToServerOptions());
        var tcp = Settings("127.0.0.1:10809");
        Assert.Equal(("127.0.0.1:10809", null, false), (tcp.Listen?.ToString(), tcp.UnixSocket, tcp.IsOff));
        Assert.Null(tcp.ToServerOptions().UnixSocket);

        // The overload that reads only TCP endpoints says what it was given.
        Assert.Equal(
            "actorblk.nbd.listen: 'unix:/run/actorblk/nbd.sock' names a Unix socket, not ADDRESS:PORT or off.",
            Assert.Throws<ConfigurationException>(() => NbdExportSettings.ParseListen("unix:/run/actorblk/nbd.sock")).Message);
    }

    [Theory]
    [InlineData("unix:", "actorblk.nbd.listen: 'unix:' names no path (e.g. unix:/run/actorblk/nbd.sock).")]
    [InlineData("unix:nbd.sock", "actorblk.nbd.listen: 'unix:nbd.sock' is a relative path; a Unix socket's path must be absolute (e.g. unix:/run/actorblk/nbd.sock): a relative one would depend on the directory the node starts in.")]
    [InlineData("unix:~/nbd.sock", "actorblk.nbd.listen: 'unix:~/nbd.sock' is a relative path;")]
    [InlineData("unix:/run/actorblk/", "actorblk.nbd.listen: 'unix:/run/actorblk/' ends with '/', which names a directory, not a socket.")]
    [InlineData("unix:@", "actorblk.nbd.listen: 'unix:@' names no socket after the @ (unix:@NAME names one in the abstract namespace).")]
    [InlineData("unix:/a\\nb", "actorblk.nbd.listen: 'unix:/a\\x0ab' holds a control character (U+000A), which this key never takes.")]
    [InlineData("unix/run/nbd.sock", "actorblk.nbd.listen: 'unix/run/nbd.sock' is not ADDRESS:PORT (e.g. 127.0.0.1:10809, [::1]:10809), unix:PATH or off.")]
    public void A_unix_socket_that_cannot_be_one_is_refused_naming_the_key(string listen, string message)
    {
        var refused = Assert.Throws<ConfigurationException>(() => Settings(listen));
        Assert.StartsWith(message, refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_path_over_107_bytes_is_refused_naming_sun_path()
    {
        var path = "/" + new string('p', 107);
        Assert.Equal(
            $"actorblk.nbd.listen: 'unix:{path}' is 108 bytes long, and a Unix domain socket's path holds at most 107 (sun_path's 108 with its terminating NUL).",
            Assert.Throws<ConfigurationException>(() => Settings($"unix:{path}")).Message);
    }

    [Fact]
    public async Task A_node_exports_on_the_socket_reports_it_and_removes_it_at_coordinated_shutdown()
    {
        using var dir = new TempDirectory("nbdx");
        var socket = dir.File("node.sock");
        var layer = BlockLayer.Get(Sys);
        var d0 = await layer.CreateDeviceAsync(new DeviceOptions { Name = "d0", Size = 8 << 20, MemoryBacked = true });
        var (actor, server) = NbdExport.Start(layer, Settings($"unix:{socket}").ToServerOptions());
        Assert.Equal($"unix:{socket}", server.Address);

        var exports = await actor.Ask<NbdExport.Exports>(NbdExport.GetExports.Instance, TimeSpan.FromSeconds(20));
        Assert.Equal(socket, Assert.IsType<UnixDomainSocketEndPoint>(exports.Endpoint).ToString());
        Assert.Equal(["d0"], exports.Names);

        // ActorBlk's own client through the socket, as a device of the same node.
        var remote = await layer.CreateDeviceAsync(new DeviceOptions { Name = "r0", Driver = "nbd", Uri = server.ExportUri("d0") });
        var data = Enumerable.Range(0, 4096).Select(i => (byte)(i * 3)).ToArray();
        await remote.WriteAsync(4096, data);
        var back = new byte[data.Length];
        await d0.ReadAsync(4096, back);
        Assert.Equal(data, back);
        await layer.DestroyDeviceAsync("r0");

        Assert.True(UnixSockets.Listens(socket));
        await CoordinatedShutdown.Get(Sys).Run(CoordinatedShutdown.ClrExitReason.Instance);
        Assert.False(File.Exists(socket));
    }
}

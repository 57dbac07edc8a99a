using ActorBlk.Hardware.Nbd;
using Xunit;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// The server keeps the last <see cref="NbdServer.FileDescriptorReserve"/> file descriptors under
/// the process's open-file limit for the rest of the node. An outside audit ran `actorblk serve`
/// under `ulimit -n 400` (max-connections 1024): one client held 400 idle connections, and the
/// next thread the runtime started (an `actorblk devices`) found no descriptor, and the .NET
/// runtime failed fast ("Out of memory.", exit 134), taking every device and the other clients'
/// connections with it. Connections that cannot be set up for want of a thread were each logged
/// with a stack trace.
/// </summary>
public sealed class NbdServerFileLimitSpec
{
    [Fact]
    public async Task Connections_accepted_near_the_open_file_limit_are_refused_and_logged_once_and_the_others_go_on()
    {
        await using var fx = NbdExportFixture.Start();
        var (served, _, _) = await RawNbdClient.OpenAsync(fx.Endpoint, "mem0");
        await using var _ = served;

        // Any descriptor from 3 up is within the reserve of this limit.
        fx.Server.OpenFileLimitHook = () => NbdServer.FileDescriptorReserve + 3;
        await using (var first = await RawNbdClient.ConnectAsync(fx.Endpoint))
        {
            Assert.True(await first.ClosedByServerAsync());
        }

        await using (var second = await RawNbdClient.ConnectAsync(fx.Endpoint))
        {
            Assert.True(await second.ClosedByServerAsync());
        }

        Assert.Equal(2, fx.Server.RefusedConnections);
        string[] lines;
        lock (fx.Log)
        {
            lines = [.. fx.Log.Where(l => l.Contains("refused", StringComparison.Ordinal))];
        }

        var line = Assert.Single(lines);
        Assert.Contains("NBD connection from 127.0.0.1:", line, StringComparison.Ordinal);
        Assert.Contains("fewer than 64 file descriptors are left under the process's open-file limit (67, ulimit -n), kept for the node; 1 refused so far", line, StringComparison.Ordinal);

        // The connection made before goes on.
        await served.SendRequestAsync(NbdCommand.Read, 1, 0, 4096);
        Assert.Equal((NbdError.None, 1UL), Pick(await served.ReadSimpleReplyAsync(_ => 4096)));

        // Descriptors back: the next client is served.
        fx.Server.OpenFileLimitHook = null;
        var (next, _, _) = await RawNbdClient.OpenAsync(fx.Endpoint, "mem0");
        await using (next)
        {
            await next.SendRequestAsync(NbdCommand.Read, 2, 0, 4096);
            Assert.Equal((NbdError.None, 2UL), Pick(await next.ReadSimpleReplyAsync(_ => 4096)));
        }
    }

    [Fact]
    public async Task Connections_whose_thread_cannot_start_are_logged_rate_limited_without_a_stack()
    {
        await using var fx = NbdExportFixture.Start();

        // Thread.Start's failure when the process is out of threads or descriptors.
        fx.Server.AcceptHook = _ => throw new OutOfMemoryException("no thread (spec)");
        const int clients = NbdServer.CloseLinesPerMinute + 3;
        for (var i = 0; i < clients; i++)
        {
            await using var client = await RawNbdClient.ConnectAsync(fx.Endpoint);
            Assert.True(await client.ClosedByServerAsync());
        }

        string[] lines;
        lock (fx.Log)
        {
            lines = [.. fx.Log.Where(l => l.Contains("closed at accept", StringComparison.Ordinal))];
        }

        Assert.Equal(NbdServer.CloseLinesPerMinute, lines.Length);
        Assert.All(lines, l => Assert.Contains("no thread (spec)", l, StringComparison.Ordinal));
        Assert.All(lines, l => Assert.DoesNotContain(Environment.NewLine, l, StringComparison.Ordinal));
        Assert.Equal(3, fx.Server.UnloggedCloses);

        fx.Server.AcceptHook = null;
        var (next, _, _) = await RawNbdClient.OpenAsync(fx.Endpoint, "mem0");
        await using (next)
        {
            await next.SendRequestAsync(NbdCommand.Read, 1, 0, 4096);
            Assert.Equal((NbdError.None, 1UL), Pick(await next.ReadSimpleReplyAsync(_ => 4096)));
        }
    }

    private static (NbdError Error, ulong Cookie) Pick((NbdError Error, ulong Cookie, byte[] Data) reply) => (reply.Error, reply.Cookie);
}

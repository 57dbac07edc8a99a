using System.Net.Sockets;
using ActorBlk.Hardware.Nbd;
using Xunit;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// The server's accepted connections carry TCP keepalive (<c>actorblk.nbd.keepalive</c>, 30 s by
/// default: probes every 10 s after 30 s of silence, closed after 3 unanswered), so a client that
/// vanished without a word is closed by the kernel instead of held for ever. An outside partition
/// audit found such half-open connections left on a leg's owner: the client had reset its
/// connection while the partition dropped the reset, and nothing looked at it again. Zero turns it
/// off. (The probes themselves are the kernel's; what is checked here is that they are asked for.)
/// </summary>
public sealed class NbdKeepAliveSpec
{
    [Theory]
    [InlineData(30, true, 30, 10)]
    [InlineData(2, true, 2, 1)]
    [InlineData(0, false, 0, 0)]
    public async Task Accepted_connections_ask_the_kernel_for_keepalive_probes(int seconds, bool on, int idle, int interval)
    {
        var fx = NbdExportFixture.Start(new NbdServerOptions { KeepAlive = TimeSpan.FromSeconds(seconds) });
        try
        {
            var accepted = new TaskCompletionSource<Socket>(TaskCreationOptions.RunContinuationsAsynchronously);
            fx.Server.AcceptHook = socket => accepted.TrySetResult(socket);

            // Negotiated: the connection was set up (its options set) before the greeting went out.
            var (client, _, _) = await RawNbdClient.OpenAsync(fx.Endpoint, "mem0");
            await using (client)
            {
                var socket = await accepted.Task.WaitAsync(Condition.Timeout);
                Assert.Equal(on ? 1 : 0, (int)socket.GetSocketOption(SocketOptionLevel.Socket, SocketOptionName.KeepAlive)!);
                if (on)
                {
                    Assert.Equal(idle, (int)socket.GetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveTime)!);
                    Assert.Equal(interval, (int)socket.GetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveInterval)!);
                    Assert.Equal(3, (int)socket.GetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveRetryCount)!);
                }

                // The connection serves as before.
                await client.SendRequestAsync(NbdCommand.Read, 1, 0, 4096);
                var (error, cookie, data) = await client.ReadSimpleReplyAsync(_ => 4096);
                Assert.Equal((NbdError.None, 1UL, 4096), (error, cookie, data.Length));
            }
        }
        finally
        {
            await fx.DisposeAsync().AsTask().WaitAsync(Condition.Timeout);
        }
    }
}

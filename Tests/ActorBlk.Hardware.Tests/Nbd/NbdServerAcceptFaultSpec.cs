using Xunit;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// A failure setting up one accepted connection (its socket reset before its options were set, a
/// bug) closes that connection and is logged; the server goes on accepting. Before, the exception
/// ended the accept loop, a task nobody observed until the server's stop: the server stayed
/// bound, and every later client waited for a greeting that never came.
/// </summary>
public sealed class NbdServerAcceptFaultSpec
{
    [Fact]
    public async Task A_connection_whose_setup_fails_is_closed_and_logged_and_the_server_accepts_the_next()
    {
        var fx = NbdExportFixture.Start();
        try
        {
            var failures = 0;
            fx.Server.AcceptHook = _ =>
            {
                if (Interlocked.Increment(ref failures) == 1)
                {
                    throw new InvalidCastException("a bug setting up the connection (spec)");
                }
            };

            await using (var first = await RawNbdClient.ConnectAsync(fx.Endpoint))
            {
                Assert.True(await first.ClosedByServerAsync());
            }

            lock (fx.Log)
            {
                var line = Assert.Single(fx.Log, l => l.Contains("InvalidCastException", StringComparison.Ordinal));
                Assert.Contains("closed at accept", line, StringComparison.Ordinal);
            }

            // The next client is served: it negotiates and reads.
            var (next, _, _) = await RawNbdClient.OpenAsync(fx.Endpoint, "mem0");
            await using (next)
            {
                await next.SendRequestAsync(ActorBlk.Hardware.Nbd.NbdCommand.Read, 1, 0, 4096);
                var (error, cookie, data) = await next.ReadSimpleReplyAsync(_ => 4096);
                Assert.Equal((ActorBlk.Hardware.Nbd.NbdError.None, 1UL, 4096), (error, cookie, data.Length));
            }
        }
        finally
        {
            await fx.DisposeAsync().AsTask().WaitAsync(Condition.Timeout);
        }
    }
}

using ActorBlk.Hardware.Nbd;
using Xunit;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// A server connection whose write of replies fails with an exception other than an I/O error (a
/// bug) is closed, and the failure logged with its type: the client sees the connection end and
/// the server lets it go. Before, the writer caught only the I/O errors: another exception
/// escaped with the writer still taken (thrown into whoever completed the request, or faulting
/// the write's task, which nobody observes), so no reply went out on that connection again, it
/// never closed, and its client waited for ever.
/// </summary>
public sealed class NbdServerWriteFaultSpec
{
    // The write throws at once (WriteOut), on the thread completing the request.
    [Fact]
    public Task A_reply_write_that_throws_unexpectedly_closes_the_connection_and_is_logged() => WithServerAsync(async fx =>
    {
        fx.Server.WriteOutHook = () => throw new NotSupportedException("a bug in the writer (spec)");
        await ReadFailsAndClosesAsync(fx, () => Task.CompletedTask);
    });

    // The write goes on asynchronously (FinishWriteAsync) and its task then faults.
    [Fact]
    public Task A_reply_write_that_faults_later_closes_the_connection_and_is_logged() => WithServerAsync(async fx =>
    {
        var write = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var called = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        fx.Server.WriteOutHook = () =>
        {
            called.TrySetResult();
            return new ValueTask(write.Task);
        };
        await ReadFailsAndClosesAsync(fx, async () =>
        {
            await called.Task.WaitAsync(Condition.Timeout);
            write.SetException(new NotSupportedException("a bug in the writer (spec)"));
        });
    });

    // The server's stop waits for its connections: bounded, so the old code's stuck connection
    // fails the spec rather than hanging it.
    private static async Task WithServerAsync(Func<NbdExportFixture, Task> body)
    {
        var fx = NbdExportFixture.Start();
        try
        {
            await body(fx);
        }
        finally
        {
            await fx.DisposeAsync().AsTask().WaitAsync(Condition.Timeout);
        }
    }

    private static async Task ReadFailsAndClosesAsync(NbdExportFixture fx, Func<Task> fail)
    {
        var (client, _, _) = await RawNbdClient.OpenAsync(fx.Endpoint, "mem0");
        await using (client)
        {
            await client.SendRequestAsync(NbdCommand.Read, 1, 0, 4096);
            await fail();

            // The client sees the connection end, with no reply; the server lets it go.
            Assert.True(await client.ClosedByServerAsync());
            await Condition.EventuallyAsync(() => fx.Server.ConnectionCount == 0, "the failed connection is closed and let go");
        }

        lock (fx.Log)
        {
            var line = Assert.Single(fx.Log, l => l.Contains("NotSupportedException", StringComparison.Ordinal));
            Assert.Contains("writing its replies failed", line, StringComparison.Ordinal);
        }

        // The server itself serves on: a new connection reads.
        fx.Server.WriteOutHook = null;
        var (next, _, _) = await RawNbdClient.OpenAsync(fx.Endpoint, "mem0");
        await using (next)
        {
            await next.SendRequestAsync(NbdCommand.Read, 2, 0, 4096);
            var (error, cookie, data) = await next.ReadSimpleReplyAsync(_ => 4096);
            Assert.Equal((NbdError.None, 2UL, 4096), (error, cookie, data.Length));
        }
    }
}

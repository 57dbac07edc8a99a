namespace ActorBlk.Testing;

/// <summary>
/// Liveness bounded on progress, not on a whole run: a run that keeps moving on a loaded machine
/// may take as long as it takes, one that stops moving (an item lost, an I/O never completed)
/// fails with a report of where it stood, instead of hanging the test run.
/// </summary>
public static class StallWatch
{
    /// <summary>
    /// Runs <paramref name="run"/> and returns its outcome, or throws <see cref="TimeoutException"/>
    /// with <paramref name="describe"/>'s report once <paramref name="progress"/> has not moved
    /// for <paramref name="stall"/>. The watchdog is a thread that sleeps between its looks (once
    /// a second), so it allocates nothing while the run goes on: allocation specs use it too.
    /// </summary>
    public static async Task<T> RunAsync<T>(Func<Task<T>> run, Func<long> progress, TimeSpan stall, Func<string> describe)
    {
        ArgumentNullException.ThrowIfNull(run);
        ArgumentNullException.ThrowIfNull(progress);
        ArgumentNullException.ThrowIfNull(describe);
        var stalled = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        using var done = new ManualResetEventSlim(false);
        var watchdog = new Thread(() =>
        {
            var last = progress();
            var since = System.Diagnostics.Stopwatch.StartNew();
            while (!done.Wait(TimeSpan.FromSeconds(1)))
            {
                var now = progress();
                if (now != last)
                {
                    last = now;
                    since.Restart();
                }
                else if (since.Elapsed >= stall)
                {
                    stalled.TrySetResult($"no progress for {stall.TotalSeconds} s (at {now}):{Environment.NewLine}{describe()}");
                    return;
                }
            }
        }) { IsBackground = true, Name = "stall-watch" };
        watchdog.Start();
        try
        {
            var running = run();
            if (await Task.WhenAny(running, stalled.Task).ConfigureAwait(false) != running)
            {
                throw new TimeoutException(await stalled.Task.ConfigureAwait(false));
            }

            return await running.ConfigureAwait(false);
        }
        finally
        {
            done.Set();
            watchdog.Join();
        }
    }

    /// <summary><see cref="RunAsync{T}"/> for a run with no result.</summary>
    public static Task RunAsync(Func<Task> run, Func<long> progress, TimeSpan stall, Func<string> describe)
    {
        ArgumentNullException.ThrowIfNull(run);
        return RunAsync(async () =>
        {
            await run().ConfigureAwait(false);
            return true;
        }, progress, stall, describe);
    }
}

using ActorBlk.Hardware.Devices;

namespace ActorBlk.Testing;

/// <summary>
/// Measures what awaited I/O allocates, process-wide (the allocation specs of both dispatch
/// modes): specs that use it must run alone in their collection.
/// </summary>
public static class AllocationMeter
{
    // I/Os started by RunIos in this process: a stall watchdog's progress mark.
    private static long s_started;

    /// <summary>
    /// Runs <paramref name="measurements"/> and returns its outcome, or throws
    /// <see cref="TimeoutException"/> with <paramref name="describe"/>'s report when no I/O of
    /// <see cref="RunIos"/> started for <paramref name="stall"/>: an awaited I/O that never
    /// completes fails the spec with the state it stalled in, instead of hanging the run. The
    /// watchdog is a thread that sleeps between looks, so it allocates nothing while I/O runs.
    /// </summary>
    public static async Task<T> WithStallReportAsync<T>(Func<Task<T>> measurements, TimeSpan stall, Func<string> describe)
    {
        ArgumentNullException.ThrowIfNull(measurements);
        ArgumentNullException.ThrowIfNull(describe);
        var stalled = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        using var done = new ManualResetEventSlim(false);
        var watchdog = new Thread(() =>
        {
            var last = Interlocked.Read(ref s_started);
            var since = System.Diagnostics.Stopwatch.StartNew();
            while (!done.Wait(TimeSpan.FromSeconds(1)))
            {
                var now = Interlocked.Read(ref s_started);
                if (now != last)
                {
                    last = now;
                    since.Restart();
                }
                else if (since.Elapsed >= stall)
                {
                    stalled.TrySetResult($"no I/O started for {stall.TotalSeconds} s after {now} in this process:{Environment.NewLine}{describe()}");
                    return;
                }
            }
        }) { IsBackground = true, Name = "allocation-meter-watchdog" };
        watchdog.Start();
        try
        {
            var run = measurements();
            if (await Task.WhenAny(run, stalled.Task).ConfigureAwait(false) != run)
            {
                throw new TimeoutException(await stalled.Task.ConfigureAwait(false));
            }

            return await run.ConfigureAwait(false);
        }
        finally
        {
            done.Set();
            watchdog.Join();
        }
    }

    /// <summary>The least of <paramref name="runs"/> measurements: background work allocates now and then, a per-I/O allocation every time.</summary>
    public static async Task<long> LeastOf(int runs, Func<Task<long>> measure)
    {
        var least = long.MaxValue;
        for (var i = 0; i < runs; i++)
        {
            least = Math.Min(least, await measure());
        }

        return least;
    }

    /// <summary>Bytes allocated in the process while <paramref name="ios"/> I/Os run.</summary>
    public static async Task<long> Measure(IBlockDevice device, int ios)
    {
        var before = GC.GetTotalAllocatedBytes(precise: true);
        await RunIos(device, ios);
        return GC.GetTotalAllocatedBytes(precise: true) - before;
    }

    /// <summary>
    /// Alternating 4 KiB writes and reads on CPUs 0-3, on a pool thread without the test
    /// framework's synchronization context and with execution-context flow suppressed: the awaits
    /// are the application's, not xUnit's.
    /// </summary>
    public static Task RunIos(IBlockDevice device, int ios)
    {
        using (ExecutionContext.SuppressFlow())
        {
            return Task.Run(async () =>
            {
                var buffer = new byte[4096];
                for (var i = 0; i < ios; i++)
                {
                    Interlocked.Increment(ref s_started);
                    var offset = (i % 4096) * 4096L;
                    if ((i & 1) == 0)
                    {
                        await device.WriteAsync(offset, buffer, cpu: i % 4);
                    }
                    else
                    {
                        await device.ReadAsync(offset, buffer, cpu: i % 4);
                    }
                }
            });
        }
    }
}

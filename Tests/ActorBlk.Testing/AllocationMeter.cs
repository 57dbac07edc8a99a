using ActorBlk.Hardware.Devices;

namespace ActorBlk.Testing;

/// <summary>
/// Measures what awaited I/O allocates, process-wide (the allocation specs of both dispatch
/// modes): specs that use it must run alone in their collection.
/// </summary>
public static class AllocationMeter
{
    // I/Os started by RunIos in this process.
    private static long s_started;

    /// <summary>I/Os started by <see cref="RunIos"/> in this process: a <see cref="StallWatch"/>'s progress mark.</summary>
    public static long IosStarted => Interlocked.Read(ref s_started);

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

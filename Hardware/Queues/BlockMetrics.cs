using System.Diagnostics.Metrics;
using System.Runtime.CompilerServices;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Queues;

/// <summary>
/// The <c>ActorBlk</c> <see cref="Meter"/>: per-device instruments named in OpenTelemetry's style,
/// tagged <c>device</c> (and <c>op</c>, <c>status</c> where they split). Watch a node with
/// <c>dotnet-counters monitor -n actorblk --counters ActorBlk</c>, or export them (serve's
/// <c>actorblk.metrics.prometheus</c>).
/// </summary>
/// <remarks>
/// Every instrument but the latency histogram is observable: it reads the per-processor
/// <see cref="DiskStats"/> counters when a listener collects, so the I/O path pays nothing for
/// it. The histogram is recorded at completion only while a listener has enabled it.
/// </remarks>
public static class BlockMetrics
{
    /// <summary>The meter's name (<c>dotnet-counters --counters ActorBlk</c>).</summary>
    public const string MeterName = "ActorBlk";

    private static readonly ConditionalWeakTable<RequestQueue, object> Queues = new();
    private static readonly string[] OpNames = ["read", "write", "discard", "flush"];

    /// <summary>The meter.</summary>
    public static Meter Meter { get; } = new(MeterName, typeof(BlockMetrics).Assembly.GetName().Version?.ToString());

    /// <summary><c>actorblk.io.duration</c>: seconds from request allocation to completion, by device and op.</summary>
    public static Histogram<double> Duration { get; } = Meter.CreateHistogram<double>(
        "actorblk.io.duration", "s", "Time from request allocation to completion.",
        advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30] });

    static BlockMetrics()
    {
        Meter.CreateObservableCounter("actorblk.io.operations", () => PerOp(s => [s.ReadIos, s.WriteIos, s.DiscardIos, s.FlushIos]), "{operation}", "Requests completed, by device and op.");
        Meter.CreateObservableCounter("actorblk.io.bytes", () => PerOp(s => [s.ReadSectors * 512, s.WriteSectors * 512, s.DiscardSectors * 512, 0]), "By", "Bytes transferred, by device and op.");
        Meter.CreateObservableCounter("actorblk.io.merges", () => PerOp(s => [s.ReadMerges, s.WriteMerges, s.DiscardMerges, 0]), "{bio}", "Bios merged into requests, by device and op.");
        Meter.CreateObservableCounter("actorblk.io.errors", Errors, "{operation}", "Requests completed with an error, by device and status.");
        Meter.CreateObservableCounter("actorblk.io.busy_time", () => PerDevice(q => q.Stats.Read().IoTicks / 1000.0), "s", "Time with at least one request in flight (io_ticks).");
        Meter.CreateObservableUpDownCounter("actorblk.io.in_flight", () => PerDevice(q => { var (r, w) = q.Stats.InFlight(); return r + w; }), "{request}", "Requests started and not completed.");
        Meter.CreateObservableUpDownCounter("actorblk.tags.in_use", () => PerDevice(q => q.Kind == QueueKind.MultiQueue ? q.HardwareContexts.Sum(h => (long)h.Tags.InUse) : 0), "{tag}", "Driver tags held, summed over the device's hardware queues.");
        Meter.CreateObservableUpDownCounter("actorblk.tags.depth", () => PerDevice(q => q.Kind == QueueKind.MultiQueue ? q.HardwareContexts.Sum(h => (long)h.Tags.NrTags) : 0), "{tag}", "Driver tags, summed over the device's hardware queues.");
        Meter.CreateObservableCounter("actorblk.io.timeouts", () => PerDevice(q => q.Stats.Timeouts), "{request}", "Requests that timed out.");
        Meter.CreateObservableCounter("actorblk.device.resets", () => PerDevice(q => q.Stats.Resets), "{reset}", "Device resets.");
        Meter.CreateObservableCounter("actorblk.queue.remaps", () => PerDevice(q => q.Stats.Remaps), "{remap}", "Re-maps of hardware queues to CPUs.");
    }

    /// <summary>Makes <paramref name="queue"/> observable (at registration).</summary>
    public static void Add(RequestQueue queue) => Queues.AddOrUpdate(queue, queue.Name);

    /// <summary>Stops observing <paramref name="queue"/> (at teardown).</summary>
    public static void Remove(RequestQueue queue) => Queues.Remove(queue);

    internal static void RecordDuration(DiskStats stats, StatGroup group, long nanoseconds) =>
        Duration.Record(nanoseconds / 1e9, new KeyValuePair<string, object?>("device", stats.Device), new KeyValuePair<string, object?>("op", OpNames[(int)group]));

    private static IEnumerable<RequestQueue> Live()
    {
        foreach (var (queue, _) in Queues)
        {
            if (queue.IsRegistered && !queue.IsDying)
            {
                yield return queue;
            }
        }
    }

    private static IEnumerable<Measurement<long>> PerOp(Func<DiskStatSample, ulong[]> values)
    {
        foreach (var queue in Live())
        {
            var v = values(queue.Stats.Read());
            for (var g = 0; g < OpNames.Length; g++)
            {
                yield return new Measurement<long>((long)v[g], new KeyValuePair<string, object?>("device", queue.Name), new KeyValuePair<string, object?>("op", OpNames[g]));
            }
        }
    }

    private static IEnumerable<Measurement<T>> PerDevice<T>(Func<RequestQueue, T> value)
        where T : struct
    {
        foreach (var queue in Live())
        {
            yield return new Measurement<T>(value(queue), new KeyValuePair<string, object?>("device", queue.Name));
        }
    }

    private static IEnumerable<Measurement<long>> Errors()
    {
        foreach (var queue in Live())
        {
            foreach (var status in Enum.GetValues<BlockStatus>())
            {
                var count = status == BlockStatus.Ok ? 0 : queue.Stats.Errors(status);
                if (count > 0)
                {
                    yield return new Measurement<long>(count, new KeyValuePair<string, object?>("device", queue.Name), new KeyValuePair<string, object?>("status", status.ToString()));
                }
            }
        }
    }
}

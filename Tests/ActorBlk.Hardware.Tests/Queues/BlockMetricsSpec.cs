using System.Diagnostics.Metrics;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Queues;

/// <summary>The <c>ActorBlk</c> meter, read with a <see cref="MeterListener"/> as dotnet-counters reads it.</summary>
public sealed class BlockMetricsSpec
{
    private sealed class Recorder : IDisposable
    {
        private readonly MeterListener _listener = new();
        private readonly string _device;
        private readonly object _lock = new();

        public Recorder(string device)
        {
            _device = device;
            _listener.InstrumentPublished = (instrument, listener) =>
            {
                if (instrument.Meter.Name == BlockMetrics.MeterName)
                {
                    listener.EnableMeasurementEvents(instrument);
                }
            };
            _listener.SetMeasurementEventCallback<long>((i, v, tags, _) => Add(i, v, tags));
            _listener.SetMeasurementEventCallback<double>((i, v, tags, _) => Add(i, v, tags));
            _listener.Start();
        }

        public List<(string Name, double Value, Dictionary<string, string> Tags)> Values { get; } = [];

        public void Collect()
        {
            // Observable values are read anew; the histogram's were recorded as requests completed.
            lock (_lock)
            {
                Values.RemoveAll(v => v.Name != "actorblk.io.duration");
            }

            _listener.RecordObservableInstruments();
        }

        public double Get(string name, params (string Key, string Value)[] tags)
        {
            lock (_lock)
            {
                return Values.Where(v => v.Name == name && tags.All(t => v.Tags.GetValueOrDefault(t.Key) == t.Value)).Sum(v => v.Value);
            }
        }

        public int Count(string name)
        {
            lock (_lock)
            {
                return Values.Count(v => v.Name == name);
            }
        }

        public void Dispose() => _listener.Dispose();

        // Only this spec's device is kept: other specs' queues complete I/O in parallel, and this
        // callback must not allocate on their threads (ZeroAllocationSpec).
        private void Add(Instrument instrument, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            var mine = false;
            foreach (var tag in tags)
            {
                mine |= tag.Key == "device" && tag.Value as string == _device;
            }

            if (!mine)
            {
                return;
            }

            var dict = new Dictionary<string, string>();
            foreach (var tag in tags)
            {
                dict[tag.Key] = tag.Value?.ToString() ?? string.Empty;
            }

            lock (_lock)
            {
                Values.Add((instrument.Name, value, dict));
            }
        }
    }

    [Fact]
    public async Task Instruments_report_the_device_counters()
    {
        using var recorder = new Recorder("metrics0");
        var clock = new ManualBlockClock(0);
        var driver = new ScriptedDriver();
        var (queue, runtime) = TestQueues.Create(driver, clock: clock, name: "metrics0");
        queue.Register();

        var r = TestQueues.Submit(queue, BlockOp.Read, 0, 8);
        var w = TestQueues.Submit(queue, BlockOp.Write, 64, 16, cpu: 1);
        runtime.RunRound();

        recorder.Collect();
        Assert.Equal(2, recorder.Get("actorblk.io.in_flight"));
        Assert.Equal(2, recorder.Get("actorblk.tags.in_use"));
        Assert.Equal(64, recorder.Get("actorblk.tags.depth"));

        clock.Advance(TimeSpan.FromMilliseconds(3));
        Assert.True(driver.InFlight.Single(rq => rq.Op == BlockOp.Read).End(BlockStatus.Ok));
        Assert.True(driver.InFlight.Single(rq => rq.Op == BlockOp.Write).End(BlockStatus.Medium));
        await r;
        await w;
        queue.Stats.CountTimeouts(2);
        queue.Stats.CountReset();

        recorder.Collect();
        Assert.Equal(1, recorder.Get("actorblk.io.operations", ("op", "read")));
        Assert.Equal(1, recorder.Get("actorblk.io.operations", ("op", "write")));
        Assert.Equal(0, recorder.Get("actorblk.io.operations", ("op", "discard")));
        Assert.Equal(4096, recorder.Get("actorblk.io.bytes", ("op", "read")));
        Assert.Equal(8192, recorder.Get("actorblk.io.bytes", ("op", "write")));
        Assert.Equal(1, recorder.Get("actorblk.io.errors", ("status", "Medium")));
        Assert.Equal(0, recorder.Get("actorblk.io.in_flight"));
        Assert.Equal(0, recorder.Get("actorblk.tags.in_use"));
        Assert.Equal(2, recorder.Get("actorblk.io.timeouts"));
        Assert.Equal(1, recorder.Get("actorblk.device.resets"));
        Assert.Equal(0.003, recorder.Get("actorblk.io.busy_time"), 6);

        // The histogram is recorded at completion (the listener enabled it): 3 ms each.
        Assert.Equal(0.003, recorder.Get("actorblk.io.duration", ("op", "read")), 6);
        Assert.Equal(0.003, recorder.Get("actorblk.io.duration", ("op", "write")), 6);

        // BlockMetrics holds queues weakly: keep this one alive through the last collection.
        GC.KeepAlive(queue);
    }

    [Fact]
    public void A_request_started_after_its_completion_time_counts_as_zero_not_negative()
    {
        // A start stamp read on another CPU than the completion's may be later than it (a clock
        // that is not strictly coherent across CPUs). The disk's counters clamp the difference
        // at 0, and so must the histogram: a negative sample would fall below every bucket and
        // pull the sum down.
        using var recorder = new Recorder("metrics2");
        var clock = new ManualBlockClock(100_000);
        var stats = new DiskStats(clock, "metrics2");
        stats.Done(BlockOp.Read, 8, clock.NowNanoseconds + 5_000_000);
        stats.Done(BlockOp.Write, 8, clock.NowNanoseconds - 2_000_000);

        Assert.Equal(0.0, recorder.Get("actorblk.io.duration", ("op", "read")));
        Assert.Equal(0.002, recorder.Get("actorblk.io.duration", ("op", "write")), 6);
        Assert.Equal(2, recorder.Count("actorblk.io.duration"));
        var sample = stats.Read();
        Assert.Equal(0UL, sample.ReadTicks);
        Assert.Equal(2UL, sample.WriteTicks);
    }

    [Fact]
    public void A_queue_that_is_shut_down_is_no_longer_reported()
    {
        using var recorder = new Recorder("metrics1");
        var (queue, _) = TestQueues.Create(new ScriptedDriver(), name: "metrics1");
        queue.Register();
        recorder.Collect();
        Assert.Equal(4, recorder.Count("actorblk.io.operations"));

        queue.MarkDying();
        recorder.Collect();
        Assert.Equal(0, recorder.Count("actorblk.io.operations"));
    }
}

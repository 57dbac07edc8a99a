using ActorBlk.Hardware.Rings;
using BenchmarkDotNet.Attributes;

namespace ActorBlk.Benchmarks;

/// <summary>Publishing into and draining the MPSC submission ring, one at a time and in batches.</summary>
[MemoryDiagnoser]
public class RingBenchmarks
{
    private const int Batch = 32;
    private readonly object[] _items = Enumerable.Range(0, Batch).Select(_ => new object()).ToArray();
    private readonly object[] _out = new object[Batch];
    private MpscRing<object> _ring = null!;

    [GlobalSetup]
    public void Setup() => _ring = new MpscRing<object>(1024);

    [Benchmark(OperationsPerInvoke = Batch, Description = "publish+take")]
    public void PublishThenTake()
    {
        for (var i = 0; i < Batch; i++)
        {
            _ring.TryPublish(_items[i]);
        }

        for (var i = 0; i < Batch; i++)
        {
            _ring.TryTake(out _);
        }
    }

    [Benchmark(OperationsPerInvoke = Batch, Description = "batch publish+take")]
    public void PublishBatchThenTakeBatch()
    {
        _ring.TryPublishBatch(_items);
        _ring.TakeBatch(_out);
    }
}

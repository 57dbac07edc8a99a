using ActorBlk.Hardware.Tags;
using BenchmarkDotNet.Attributes;

namespace ActorBlk.Benchmarks;

/// <summary>Taking and freeing a tag from a 64-deep map, on one thread (the common, uncontended case).</summary>
[MemoryDiagnoser]
public class TagBenchmarks
{
    private const int Batch = 32;
    private readonly int[] _tags = new int[Batch];
    private TagMap _map = null!;

    [Params(64, 1024)]
    public int Depth { get; set; }

    [GlobalSetup]
    public void Setup() => _map = new TagMap(Depth, 0, cpuCount: 4, seed: 1);

    [Benchmark(OperationsPerInvoke = Batch, Description = "alloc+free")]
    public void AllocateAndFree()
    {
        for (var i = 0; i < Batch; i++)
        {
            _tags[i] = _map.TryGetNormal(0);
        }

        for (var i = 0; i < Batch; i++)
        {
            _map.Free(_tags[i], 0);
        }
    }
}

using ActorBlk.Actors;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using Akka.Actor;
using Akka.Configuration;
using BenchmarkDotNet.Attributes;

namespace ActorBlk.Benchmarks;

/// <summary>
/// The whole path on the null device (irqmode 0): submit, dispatch, complete, await, one I/O at a
/// time and 32 at a time, in ring and mailbox dispatch. Allocated bytes per operation show the
/// ring path's zero-allocation contract.
/// </summary>
[MemoryDiagnoser]
public class NullDeviceBenchmarks
{
    private const int Ios = 4096;
    private ActorSystem _system = null!;
    private IBlockDevice _device = null!;
    private byte[] _buffer = null!;

    [Params(DispatchMode.Ring, DispatchMode.Mailbox)]
    public DispatchMode Dispatch { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        var config = ConfigurationFactory.ParseString("akka.loglevel = WARNING").WithFallback(ActorBlkSettings.DefaultConfig());
        _system = ActorSystem.Create("bench", config);
        _device = BlockLayer.Get(_system).CreateDevice(new DeviceOptions
        {
            Name = "bdn0",
            Size = 1L << 30,
            IrqMode = IrqMode.None,
            Dispatch = Dispatch,
        });
        _buffer = GC.AllocateArray<byte>(4096, pinned: true);
    }

    [GlobalCleanup]
    public void Cleanup() => _system.Terminate().Wait();

    [Benchmark(OperationsPerInvoke = Ios, Description = "await ReadAsync, QD1")]
    public async Task ReadQueueDepth1()
    {
        for (var i = 0; i < Ios; i++)
        {
            await _device.ReadAsync((i & 1023) * 4096L, _buffer);
        }
    }

    [Benchmark(OperationsPerInvoke = Ios, Description = "ExecuteAsync, QD32")]
    public async Task ReadQueueDepth32()
    {
        var inflight = new ValueTask<BlockStatus>[32];
        for (var i = 0; i < Ios; i += 32)
        {
            for (var j = 0; j < 32; j++)
            {
                inflight[j] = _device.ExecuteAsync(BlockOp.Read, ((i + j) & 1023) * 4096L, 4096, _buffer);
            }

            for (var j = 0; j < 32; j++)
            {
                await inflight[j];
            }
        }
    }
}

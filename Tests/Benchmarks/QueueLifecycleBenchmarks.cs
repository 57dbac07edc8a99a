using ActorBlk.Actors;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Tags;
using ActorBlk.Hardware.Topology;
using Akka.Actor;
using Akka.Configuration;
using BenchmarkDotNet.Attributes;

namespace ActorBlk.Benchmarks;

/// <summary>
/// Creating and destroying queues (issue 5 item 4, blk-mq-semantics §9 item 2): a queue that is
/// never registered must be cheap, as SCSI probing creates and drops one per absent LUN.
/// <list type="bullet">
/// <item><c>unregistered (data plane)</c>: allocate + initialise as multi-queue on the host's
/// existing tag set, then destroy (what a probe of an absent LUN costs). Target: 10,000/s.</item>
/// <item><c>unregistered (block layer)</c>: the same through <see cref="BlockLayer.AllocateDeviceAsync"/> and
/// <see cref="BlockLayer.DestroyDeviceAsync"/>, two guardian round trips and a driver.</item>
/// <item><c>registered</c>: <see cref="BlockLayer.CreateDeviceAsync(DeviceOptions, CancellationToken)"/> +
/// destroy: the actors, the attribute tree, the topology registration. Target: 2,000/s.</item>
/// <item><c>registered + one read</c>: as registered, with one 4 KiB read, which in ring dispatch
/// starts the dispatch thread of one hardware queue (loops start with their first work).</item>
/// </list>
/// One operation is one create+destroy cycle.
/// </summary>
[MemoryDiagnoser]
public class QueueLifecycleBenchmarks
{
    private ActorSystem _system = null!;
    private BlockLayer _layer = null!;
    private TagSet _hostTags = null!;
    private NullBlockDriver _driver = null!;
    private CpuTopology _topology = null!;
    private readonly byte[] _buffer = new byte[4096];
    private int _n;

    [Params(DispatchMode.Ring, DispatchMode.Mailbox)]
    public DispatchMode Dispatch { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        var config = ConfigurationFactory.ParseString("akka.loglevel = WARNING").WithFallback(ActorBlkSettings.DefaultConfig());
        _system = ActorSystem.Create("lifecycle", config);
        _layer = BlockLayer.Get(_system);

        // The SCSI host: a registered device keeps the shared tag set alive across the cycles.
        _layer.CreateDevice(Options("host0"));
        _topology = _layer.Topology;
        var options = Options("probe");
        _driver = (NullBlockDriver)DeviceBuilder.CreateDriver(options);
        _hostTags = DeviceBuilder.CreateTagSet(options, _driver, _topology);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _driver.Dispose();
        _system.Terminate().Wait();
    }

    [Benchmark(Description = "unregistered (data plane)")]
    public void UnregisteredDataPlane()
    {
        var queue = ActorBlk.Hardware.Queues.RequestQueue.Allocate("probe", _topology, _driver.Limits);
        queue.InitializeMq(_hostTags, _driver);
        queue.Destroy();
    }

    [Benchmark(Description = "unregistered (block layer)")]
    public async Task UnregisteredBlockLayer()
    {
        var name = "u" + _n++;
        await _layer.AllocateDeviceAsync(Options(name));
        await _layer.DestroyDeviceAsync(name);
    }

    [Benchmark(Description = "registered")]
    public async Task Registered()
    {
        var name = "r" + _n++;
        await _layer.CreateDeviceAsync(Options(name));
        await _layer.DestroyDeviceAsync(name);
    }

    [Benchmark(Description = "registered + one read")]
    public async Task RegisteredWithIo()
    {
        var name = "io" + _n++;
        var device = await _layer.CreateDeviceAsync(Options(name));
        await device.ReadAsync(0, _buffer);
        await _layer.DestroyDeviceAsync(name);
    }

    private DeviceOptions Options(string name) => new()
    {
        Name = name,
        Size = 1 << 30,
        SubmitQueues = 2,
        SharedTags = true,
        TagSetName = "host",
        Dispatch = Dispatch,
    };
}

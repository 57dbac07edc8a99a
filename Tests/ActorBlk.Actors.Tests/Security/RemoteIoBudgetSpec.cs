using System.Diagnostics.Metrics;
using ActorBlk.Actors.Serialization;
using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Akka.Actor;
using Akka.Cluster;
using Akka.Configuration;
using Akka.Event;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests.Security;

/// <summary>
/// The bytes remote I/O may hold in flight on a node (README, "Security",
/// <c>actorblk.remote.max-inflight-io-bytes</c>), over real remoting from a peer outside the
/// cluster (<see cref="RemoteSurfaceSpec.AttackerConfig"/>). Each read or write was held to one
/// remoting frame, but nothing bounded how many were in flight: an outside audit sent 20,000 reads
/// of 118 KB (150 bytes each on the wire) and the node grew from 119 MB to 2.38 GB. The device here
/// holds every request until the spec completes it, so what was accepted stays in flight.
/// </summary>
public sealed class RemoteIoBudgetSpec : Akka.TestKit.Xunit2.TestKit, IAsyncLifetime
{
    private const int Budget = 64 << 10;
    private const int Length = 16 << 10; // four fit in the budget
    private const long Spacing = 64 << 10; // apart, so the plug never merges two reads into one

    private static readonly Config NodeConfig = ConfigurationFactory.ParseString($$"""
        akka.actor.provider = cluster
        akka.remote.dot-netty.tcp { hostname = 127.0.0.1, port = 0 }
        akka.cluster.min-nr-of-members = 1
        akka.cluster.log-info = off
        actorblk.remote.max-inflight-io-bytes = {{Budget}}
        """).WithFallback(ActorBlkRemoting.SerializerConfig).WithFallback(ActorBlkRemoting.UntrustedModeConfig).WithFallback(Configs.Simulated);

    private readonly ActorSystem _attacker;
    private readonly ScriptedDriver _driver = new();
    private IBlockDevice? _device;

    public RemoteIoBudgetSpec(ITestOutputHelper output)
        : base(NodeConfig, "actorblk", output)
    {
        _attacker = ActorSystem.Create("attacker", RemoteSurfaceSpec.AttackerConfig);
    }

    private BlockLayer Layer => BlockLayer.Get(Sys);

    private RemoteIoBudget RemoteBudget => RemoteIoBudget.For(Sys);

    private string Node => ((ExtendedActorSystem)Sys).Provider.DefaultAddress.ToString();

    public async Task InitializeAsync()
    {
        var cluster = Cluster.Get(Sys);
        await cluster.JoinAsync(cluster.SelfAddress);
        _device = await Layer.CreateDeviceAsync(new DeviceOptions { Name = "held" }, _driver);
    }

    public async Task DisposeAsync()
    {
        _driver.CompleteAll(BlockStatus.IoError);
        await _attacker.Terminate();
    }

    private ActorSelection Guardian(ActorSystem from) => from.ActorSelection(ReferenceEquals(from, Sys) ? "/user/actorblk" : $"{Node}/user/actorblk");

    private int InFlight => _driver.InFlight.Count;

    private Task Until(Func<bool> condition) => AwaitConditionAsync(() => Task.FromResult(condition()), TimeSpan.FromSeconds(30), TimeSpan.FromMilliseconds(10));

    [Fact]
    public async Task Remote_io_past_the_budget_is_answered_with_Resource_at_once_until_what_is_held_completes()
    {
        var attacker = CreateTestProbe(_attacker);
        var deadLetters = CreateTestProbe();
        Sys.EventStream.Subscribe(deadLetters.Ref, typeof(DeadLetter));

        const int reads = 10;
        for (var i = 0; i < reads; i++)
        {
            Guardian(_attacker).Tell(new BlockLayer.Io("held", i, BlockOp.Read, i * Spacing, Length), attacker.Ref);
        }

        // Four fit and stay in flight; the other six are answered at once, without data (before
        // the fix all ten were allocated and held, and none was answered).
        var answered = new List<long>();
        for (var i = 0; i < reads - (Budget / Length); i++)
        {
            var refused = await attacker.ExpectMsgAsync<SoftwareContextProtocol.Completed>(TimeSpan.FromSeconds(30));
            Assert.Equal(BlockStatus.Resource, refused.Status);
            Assert.Null(refused.Data);
            answered.Add(refused.Id);
        }

        await Until(() => InFlight == Budget / Length);
        Assert.Equal(Budget, RemoteBudget.InUse);

        // The operator sees it on the meter, by node, as dotnet-counters reads it.
        using var metrics = new Recorder();
        Assert.Equal(Budget, metrics.Collect("actorblk.remote.io_memory", Node));
        Assert.Equal(reads - (Budget / Length), metrics.Collect("actorblk.remote.io_refused", Node));

        // A write's data counts as a read's buffer does.
        Guardian(_attacker).Tell(new BlockLayer.Io("held", 20, BlockOp.Write, 20 * Spacing, Length, new byte[Length]), attacker.Ref);
        Assert.Equal(new SoftwareContextProtocol.Completed(20, BlockStatus.Resource, null), await attacker.ExpectMsgAsync<SoftwareContextProtocol.Completed>(TimeSpan.FromSeconds(30)));

        // So does a read from a peer that names no sender, which arrives with dead letters as its
        // sender (as the software-context actor submits it): refused, its answer goes to dead
        // letters, nothing is held.
        MessageIo.Submit(_device!, new SoftwareContextProtocol.Submit(21, BlockOp.Read, 21 * Spacing, Length), 0, Sys.DeadLetters, Sys.Log, int.MaxValue, RemoteBudget);
        await deadLetters.FishForMessageAsync<DeadLetter>(d => d.Message is SoftwareContextProtocol.Completed { Id: 21, Status: BlockStatus.Resource }, TimeSpan.FromSeconds(30));

        // Local callers are never counted: the BlockLayer API and an actor of the process reach the
        // device while the budget is full.
        var local = _device!.ExecuteAsync(BlockOp.Read, 30 * Spacing, Length, new byte[Length]).AsTask();
        Guardian(Sys).Tell(new BlockLayer.Io("held", 31, BlockOp.Read, 31 * Spacing, Length), TestActor);
        await Until(() => InFlight == (Budget / Length) + 2);
        Assert.Equal(Budget, RemoteBudget.InUse);

        // What was held completes: each accepted read is answered once, with its data, and the
        // budget is free again.
        Assert.Equal((Budget / Length) + 2, _driver.CompleteAll());
        Assert.Equal(BlockStatus.Ok, await local.WaitAsync(TimeSpan.FromSeconds(30)));
        var localReply = await ExpectMsgAsync<SoftwareContextProtocol.Completed>(TimeSpan.FromSeconds(30));
        Assert.Equal((31L, BlockStatus.Ok, Length), (localReply.Id, localReply.Status, localReply.Data?.Length ?? 0));
        for (var i = 0; i < Budget / Length; i++)
        {
            var done = await attacker.ExpectMsgAsync<SoftwareContextProtocol.Completed>(TimeSpan.FromSeconds(30));
            Assert.Equal((BlockStatus.Ok, Length), (done.Status, done.Data?.Length ?? 0));
            answered.Add(done.Id);
        }

        Assert.Equal(Enumerable.Range(0, reads).Select(i => (long)i), answered.Order());
        Assert.Equal(0, RemoteBudget.InUse);
        Assert.Equal(0, metrics.Collect("actorblk.remote.io_memory", Node));
        Assert.Equal(reads - (Budget / Length) + 2, metrics.Collect("actorblk.remote.io_refused", Node));

        // A new remote read is served, and it is the only answer left: every request was answered once.
        _driver.CompleteInline = true;
        Guardian(_attacker).Tell(new BlockLayer.Io("held", 40, BlockOp.Read, 0, Length), attacker.Ref);
        var again = await attacker.ExpectMsgAsync<SoftwareContextProtocol.Completed>(TimeSpan.FromSeconds(30));
        Assert.Equal((40L, BlockStatus.Ok, Length), (again.Id, again.Status, again.Data?.Length ?? 0));
        Assert.False(attacker.HasMessages);
        Assert.False(HasMessages);
        Assert.Equal(0, RemoteBudget.InUse);
        Assert.Equal(0L, _device.Queue.DoubleCompletions);
    }

    // The remote instruments' values by node, collected as a MeterListener (dotnet-counters) does.
    private sealed class Recorder : IDisposable
    {
        private readonly MeterListener _listener = new();
        private readonly List<(string Name, long Value, string? Node)> _values = [];

        public Recorder()
        {
            _listener.InstrumentPublished = (instrument, listener) =>
            {
                if (instrument.Meter.Name == BlockMetrics.MeterName && instrument.Name.StartsWith("actorblk.remote.", StringComparison.Ordinal))
                {
                    listener.EnableMeasurementEvents(instrument);
                }
            };
            _listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
            {
                string? node = null;
                foreach (var tag in tags)
                {
                    node = tag.Key == "node" ? tag.Value as string : node;
                }

                lock (_values)
                {
                    _values.Add((instrument.Name, value, node));
                }
            });
            _listener.Start();
        }

        /// <summary>The value of <paramref name="name"/> for <paramref name="node"/>; null when not reported.</summary>
        public long? Collect(string name, string node)
        {
            lock (_values)
            {
                _values.Clear();
            }

            _listener.RecordObservableInstruments();
            lock (_values)
            {
                var hits = _values.Where(v => v.Name == name && v.Node == node).ToList();
                return hits.Count == 0 ? null : hits.Sum(v => v.Value);
            }
        }

        public void Dispose() => _listener.Dispose();
    }
}

using System.Collections.Concurrent;
using ActorBlk.Actors.Clustering;
using ActorBlk.Hardware.Devices;
using Akka.Actor;
using Akka.Configuration;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests.MultiNode;

/// <summary>
/// The references of the actor that shares one local queue among the handles of another node's
/// device (<c>actorblk-remote</c>), driven message by message through its mailbox with a connection
/// the spec completes or fails. Every handle, and every open abandoned by its caller (a cancelled
/// or timed-out ask sends a Close of its handle), gives its reference back exactly once, so the
/// queue is released when the last real handle closes.
/// </summary>
[Collection(ClusterCollection.Name)]
public sealed class RemoteDeviceHandleSpec : Akka.TestKit.Xunit2.TestKit
{
    private const string Node = "127.0.0.1:1";

    private static readonly ClusterDevice Entry = new("d0", Node, 7, 1 << 20, 512, 1, false, ClusterDeviceStates.Live, $"nbd://{Node}/d0");

    // As DeviceOpener.OpenMissingAsync opens a missing leg: only its name and node are known.
    private static readonly ClusterDevice MissingEntry = new("d0", Node, 0, 0, 512, 1, false, ClusterDeviceStates.Live, string.Empty);

    private readonly ConcurrentDictionary<string, string> _imported = new(StringComparer.Ordinal);
    private readonly List<TaskCompletionSource<IBlockDevice>> _connections = [];
    private readonly SemaphoreSlim _connecting = new(0);

    // The registry of its own is off: the spec publishes the snapshot the actor reads. Information
    // lines are published (the cluster's own are off in ClusterNode's configuration).
    public RemoteDeviceHandleSpec(ITestOutputHelper output)
        : base(ConfigurationFactory.ParseString("actorblk.cluster.registry.enabled = off\nakka.loglevel = INFO").WithFallback(ClusterNode.Config()), output: output)
    {
    }

    private static TimeSpan Liveness => TimeSpan.FromSeconds(30);

    // Found reading the degraded start: an open of a missing leg joined the connection being built,
    // its caller gave up (the table destroyed, the node stopping) and the Close gave its reference
    // back; then the connection failed and the failed waiter's reference was given back again. The
    // mirror's own handle then held the slot at zero: its Close was answered at once, the slot was
    // never released, and it would connect a queue nobody held when the device appeared.
    [Fact]
    public async Task An_abandoned_open_that_waited_on_a_failed_connection_gives_its_reference_back_once()
    {
        var actor = StartActor();
        var mirror = CreateTestProbe();
        actor.Tell(new RemoteDevices.OpenMissing(MissingEntry, null, 1), mirror.Ref);
        Assert.Null(mirror.ExpectMsg<RemoteDevices.Opened>().Target.Device);

        // The device appears: its first queue is being connected.
        BlockLayer.Get(Sys).ClusterDevices.Publish([Entry]);
        var connection = await NextConnectionAsync();

        // Another open joins the connection, and its caller gives up.
        var abandoned = CreateTestProbe();
        actor.Tell(new RemoteDevices.Open(Entry, null, 2), abandoned.Ref);
        actor.Tell(new RemoteDevices.Close(Entry.Id, 2), TestActor);
        ExpectMsg<RemoteDevices.Closed>();

        // The connection fails (the waiter was abandoned: nobody is told).
        await EventFilter.Warning(contains: $"Connecting missing {Entry.Id} failed").ExpectOneAsync(() =>
        {
            connection.SetException(new IOException("connection refused"));
            return Task.CompletedTask;
        });

        // The mirror's handle was the last: its Close releases the slot.
        actor.Tell(new RemoteDevices.Close(Entry.Id, 1), mirror.Ref);
        mirror.ExpectMsg<RemoteDevices.Closed>();
        Assert.Empty(_imported);
    }

    // The same rule for an open deferred behind a release: the last handle closed while the first
    // connection was being built, an open came (deferred until the release ends) and was abandoned.
    // It must not be sent again after the release, or it would connect a queue nobody holds.
    [Fact]
    public async Task An_open_abandoned_while_the_last_handle_is_released_is_dropped()
    {
        var actor = StartActor();
        var first = CreateTestProbe();
        actor.Tell(new RemoteDevices.Open(Entry, null, 1), first.Ref);
        var connection = await NextConnectionAsync();

        var closer = CreateTestProbe();
        actor.Tell(new RemoteDevices.Close(Entry.Id, 1), closer.Ref);
        var deferred = CreateTestProbe();
        actor.Tell(new RemoteDevices.Open(Entry, null, 2), deferred.Ref);
        actor.Tell(new RemoteDevices.Close(Entry.Id, 2), TestActor);
        ExpectMsg<RemoteDevices.Closed>();

        // The connection completes: nobody holds it, so it is released at once.
        var layer = BlockLayer.Get(Sys);
        var name = RemoteDeviceActor.LocalName(Entry);
        connection.SetResult(await layer.CreateDeviceAsync(new DeviceOptions { Name = name, Size = 1 << 20, PollQueues = 0 }));
        closer.ExpectMsg<RemoteDevices.Closed>();

        // Anything the release sent itself is in the mailbox before this Close of a device nobody opened.
        actor.Tell(new RemoteDevices.Close("other@127.0.0.1:2", 3), TestActor);
        ExpectMsg<RemoteDevices.Closed>();
        Assert.Empty(_imported);
        Assert.False(layer.TryGetDevice(name, out _));
        Assert.Single(_connections);
    }

    // A Close of a handle that holds nothing (its open failed, or a second Close of the same
    // handle) changes nothing: the other handle still holds the queue.
    [Fact]
    public async Task A_second_close_of_one_handle_does_not_release_another_handles_queue()
    {
        var actor = StartActor();
        var layer = BlockLayer.Get(Sys);
        var name = RemoteDeviceActor.LocalName(Entry);
        actor.Tell(new RemoteDevices.Open(Entry, null, 1), TestActor);
        (await NextConnectionAsync()).SetResult(await layer.CreateDeviceAsync(new DeviceOptions { Name = name, Size = 1 << 20, PollQueues = 0 }));
        ExpectMsg<RemoteDevices.Opened>();
        actor.Tell(new RemoteDevices.Open(Entry, null, 2), TestActor);
        ExpectMsg<RemoteDevices.Opened>();

        actor.Tell(new RemoteDevices.Close(Entry.Id, 1), TestActor);
        ExpectMsg<RemoteDevices.Closed>();
        actor.Tell(new RemoteDevices.Close(Entry.Id, 1), TestActor);
        ExpectMsg<RemoteDevices.Closed>();
        Assert.True(layer.TryGetDevice(name, out _));

        actor.Tell(new RemoteDevices.Close(Entry.Id, 2), TestActor);
        ExpectMsg<RemoteDevices.Closed>();
        Assert.False(layer.TryGetDevice(name, out _));
        Assert.Empty(_imported);
    }

    // A missing leg whose node refuses connections is tried again at every check (every second by
    // default): it wrote a warning (and an information line) each time. The same failure is now
    // logged once, a different one again, and a success says what it recovered from.
    [Fact]
    public async Task A_connection_failing_alike_at_every_check_is_logged_once()
    {
        var warnings = CreateTestProbe();
        Sys.EventStream.Subscribe(warnings.Ref, typeof(Akka.Event.Warning));
        var infos = CreateTestProbe();
        Sys.EventStream.Subscribe(infos.Ref, typeof(Akka.Event.Info));
        var actor = StartActor();
        actor.Tell(new RemoteDevices.OpenMissing(MissingEntry, null, 1), TestActor);
        ExpectMsg<RemoteDevices.Opened>();

        string[] failures = ["connection refused", "connection refused", "connection refused", "no route to host"];
        foreach (var failure in failures)
        {
            (await RecheckUntilConnectingAsync()).SetException(new IOException(failure));
        }

        // The last failure's warning comes after anything the earlier ones logged.
        Assert.Contains("connection refused", warnings.ExpectMsg<Akka.Event.Warning>().Message.ToString(), StringComparison.Ordinal);
        Assert.Contains("no route to host", warnings.ExpectMsg<Akka.Event.Warning>().Message.ToString(), StringComparison.Ordinal);

        (await RecheckUntilConnectingAsync()).SetResult(await BlockLayer.Get(Sys).CreateDeviceAsync(new DeviceOptions { Name = RemoteDeviceActor.LocalName(Entry), Size = 1 << 20, PollQueues = 0 }));
        infos.FishForMessage<Akka.Event.Info>(i => i.Message.ToString()!.Contains("reconnected", StringComparison.Ordinal)
            && i.Message.ToString()!.Contains("after failing: no route to host", StringComparison.Ordinal));
        actor.Tell(new RemoteDevices.Close(Entry.Id, 1), TestActor);
        ExpectMsg<RemoteDevices.Closed>();
    }

    private IActorRef StartActor() => Sys.ActorOf(RemoteDevices.Props(BlockLayer.Get(Sys), _imported, TimeSpan.Zero, Connect), "remote-under-test");

    private Task<IBlockDevice> Connect(ClusterDevice device, string localName, DeviceOptions template)
    {
        var connection = new TaskCompletionSource<IBlockDevice>(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_connections)
        {
            _connections.Add(connection);
        }

        _connecting.Release();
        return connection.Task;
    }

    // Every new snapshot is a check, and a check connects a published device again unless a
    // connection is still under way (its failure may not have reached the actor yet): publish
    // until the next connection starts.
    private async Task<TaskCompletionSource<IBlockDevice>> RecheckUntilConnectingAsync()
    {
        using var deadline = new CancellationTokenSource(Liveness);
        while (true)
        {
            BlockLayer.Get(Sys).ClusterDevices.Publish([Entry]);
            if (await _connecting.WaitAsync(TimeSpan.FromMilliseconds(20), deadline.Token))
            {
                lock (_connections)
                {
                    return _connections[^1];
                }
            }
        }
    }

    private async Task<TaskCompletionSource<IBlockDevice>> NextConnectionAsync()
    {
        Assert.True(await _connecting.WaitAsync(Liveness), "no connection was started");
        lock (_connections)
        {
            return _connections[^1];
        }
    }
}

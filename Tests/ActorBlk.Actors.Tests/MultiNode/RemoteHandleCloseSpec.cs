using ActorBlk.Actors.Clustering;
using ActorBlk.Hardware.Devices;
using Akka.Actor;
using Xunit;

namespace ActorBlk.Actors.Tests.MultiNode;

/// <summary>
/// README "Cluster": closing the last handle of another node's device destroys its local queue
/// before it completes, and a node going down destroys its queues itself. A close asked of the
/// node's remote-device actor just before its actor system stopped was never answered (the actor
/// went with the system while it destroyed the queue): the close waited its whole timeout, 50 s
/// with the default drain timeout, and then threw Akka's <see cref="AskTimeoutException"/> (a
/// cluster chaos audit: a node crashed while its handles closed, and every close took 50 s).
/// A handle's <c>Disconnected</c> and <c>Reconnected</c> handlers were attached to the queue that
/// every handle of the device on the node shares, and closing the handle left them there: a closed
/// handle went on hearing its device's events, and an application that opened and closed handles
/// beside one kept open piled up handlers (the same audit, whose handles closed and reopened).
/// </summary>
[Collection(ClusterCollection.Name)]
public sealed class RemoteHandleCloseSpec
{
    private static readonly TimeSpan Setup = TimeSpan.FromSeconds(90);

    // Far below the close's own timeout (50 s), far above a loaded machine's termination.
    private static readonly TimeSpan Prompt = TimeSpan.FromSeconds(20);

    [Fact]
    public async Task A_close_in_flight_when_its_node_stops_completes_with_the_node()
    {
        var a = ClusterNode.Start("a");
        await using var _a = a;
        var b = ClusterNode.Start("b");
        await using var _b = b;
        await a.JoinAsync(a, Setup);
        await b.JoinAsync(a, Setup);
        a.ExportNbd();
        await a.Layer.CreateDeviceAsync(new DeviceOptions { Name = "vclose", Size = 1 << 20, MemoryBacked = true, PollQueues = 0 });
        await b.WaitForDevicesAsync(d => d.Any(e => e.Name == "vclose" && e.NbdEndpoint.Length > 0), Setup);
        var handle = await b.Layer.OpenAsync($"vclose@{a.Name}");
        await handle.WriteAsync(0, new byte[4096]);

        // The remote-device actor is gone before it answers the close (as when the system stops
        // while it destroys the queue), and then the node's actor system stops.
        var remote = await b.System.ActorSelection($"/user/{RemoteDevices.ActorName}").ResolveOne(Setup);
        await remote.GracefulStop(Setup);
        var close = handle.CloseAsync().AsTask();
        await b.System.Terminate().WaitAsync(Setup);

        // The close ends with the node, as the queue did: neither a 50 s wait nor Akka's AskTimeoutException.
        await close.WaitAsync(Prompt);
        Assert.True(handle.IsClosed);
    }

    [Fact]
    public async Task A_closed_handle_hears_no_more_events_of_the_queue_its_node_shares()
    {
        var a = ClusterNode.Start("a");
        await using var _a = a;
        var b = ClusterNode.Start("b");
        await using var _b = b;
        await a.JoinAsync(a, Setup);
        await b.JoinAsync(a, Setup);
        a.ExportNbd();
        await a.Layer.CreateDeviceAsync(new DeviceOptions { Name = "vev", Size = 1 << 20, MemoryBacked = true, PollQueues = 0 });
        await b.WaitForDevicesAsync(d => d.Any(e => e.Name == "vev" && e.NbdEndpoint.Length > 0), Setup);
        var closed = await b.Layer.OpenAsync($"vev@{a.Name}");
        await using var open = await b.Layer.OpenAsync($"vev@{a.Name}");
        Assert.Same(closed.Queue, open.Queue);
        var heardByClosed = 0;
        closed.Disconnected += (_, _) => Interlocked.Increment(ref heardByClosed);
        closed.Reconnected += (_, _) => Interlocked.Increment(ref heardByClosed);
        var events = new System.Collections.Concurrent.ConcurrentQueue<string>();
        var reconnected = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        open.Disconnected += (_, _) => events.Enqueue("disconnected");
        open.Reconnected += (_, _) =>
        {
            events.Enqueue("reconnected");
            reconnected.TrySetResult();
        };
        await closed.CloseAsync();

        // The device is destroyed and created again: the open handle moves to the new one; the
        // closed one's handlers (raised before the open one's, in the order they were added) stay silent.
        await a.Layer.DestroyDeviceAsync("vev");
        await a.Layer.CreateDeviceAsync(new DeviceOptions { Name = "vev", Size = 1 << 20, MemoryBacked = true, PollQueues = 0 });
        await reconnected.Task.WaitAsync(Setup);
        Assert.Equal(["disconnected", "reconnected"], events.ToArray());
        Assert.Equal(0, Volatile.Read(ref heardByClosed));
    }
}

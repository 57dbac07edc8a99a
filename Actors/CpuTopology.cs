using ActorBlk.Actors.Serialization;
using ActorBlk.Hardware.Queues;
using Akka.Actor;
using ActorBlk.Hardware.Topology;
using Akka.Event;

namespace ActorBlk.Actors;

/// <summary>
/// Protocol of the CPU-topology actor: it holds the current topology snapshot and the request
/// queues registered against it, so that a change of CPUs can re-map every one of them.
/// </summary>
public static class CpuTopologyProtocol
{
    /// <summary>Register a queue (reply <see cref="Registered"/>). Local only.</summary>
    public sealed record Register(RequestQueue Queue) : INoSerializationVerificationNeeded;

    /// <summary>The queue is registered against topology <paramref name="Version"/>.</summary>
    public sealed record Registered(string Queue, long Version) : IActorBlkMessage;

    /// <summary>Unregister a queue (reply <see cref="Unregistered"/>). Local only.</summary>
    public sealed record Unregister(RequestQueue Queue) : INoSerializationVerificationNeeded;

    /// <summary>The queue is no longer re-mapped.</summary>
    public sealed record Unregistered(string Queue) : IActorBlkMessage;

    /// <summary>Asks for the current topology.</summary>
    public sealed record GetTopology : IActorBlkQuery
    {
        /// <summary>The instance.</summary>
        public static readonly GetTopology Instance = new();
    }

    /// <summary>The topology, with CPU sets in the kernel's cpulist form.</summary>
    public sealed record TopologyInfo(long Version, string Source, int PossibleCpus, string Present, string Online, int NumaNodes, string[] Queues) : IActorBlkMessage;

    /// <summary>
    /// CPU <paramref name="Cpu"/> goes offline (a hotplug event). Every registered queue is
    /// frozen and drained, re-mapped to the new topology and unfrozen; the reply is
    /// <see cref="TopologyChanged"/>, or a <see cref="Status.Failure"/> for a CPU that is not
    /// present or is the last one online.
    /// </summary>
    public sealed record CpuOffline(int Cpu) : IActorBlkMessage;

    /// <summary>CPU <paramref name="Cpu"/> comes online; as <see cref="CpuOffline"/>.</summary>
    public sealed record CpuOnline(int Cpu) : IActorBlkMessage;

    /// <summary>The topology after a hotplug event: its version, the online CPUs, the queues re-mapped.</summary>
    public sealed record TopologyChanged(long Version, string Online, int Remapped) : IActorBlkMessage;

    /// <summary>
    /// Props of the actor starting from <paramref name="initial"/>. With <paramref name="watchedOnlineFile"/>
    /// (the host's <c>/sys/devices/system/cpu/online</c>) it reads that file every
    /// <paramref name="watchInterval"/> and turns each change into <see cref="CpuOffline"/> and
    /// <see cref="CpuOnline"/> events.
    /// </summary>
    public static Props Props(CpuTopology initial, string? watchedOnlineFile = null, TimeSpan watchInterval = default) =>
        Props(initial, watchedOnlineFile, watchInterval, null);

    /// <summary>As above, with <paramref name="published"/> called with every topology the actor adopts (the first at start).</summary>
    internal static Props Props(CpuTopology initial, string? watchedOnlineFile, TimeSpan watchInterval, Action<CpuTopology>? published, CancellationToken stopping = default) =>
        Akka.Actor.Props.Create(() => new CpuTopologyActor(initial, watchedOnlineFile, watchInterval, published, stopping));
}

/// <summary>The CPU-topology actor.</summary>
internal sealed class CpuTopologyActor : ReceiveActor, IWithUnboundedStash, IWithTimers
{
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly List<RequestQueue> _queues = [];
    private readonly string? _watchedOnlineFile;
    private readonly TimeSpan _watchInterval;
    private readonly Action<CpuTopology>? _published;
    private CpuTopology _topology;
    private CpuSet _lastSeenOnline;
    private long _version = 1;

    // The node is stopping: a remap stops waiting for queues to drain (one may never drain, its
    // requests held by a device that does not answer), so the devices' teardown, queued behind
    // the remap, can fail what they hold and finish.
    private readonly CancellationToken _stopping;

    public CpuTopologyActor(CpuTopology initial, string? watchedOnlineFile, TimeSpan watchInterval, Action<CpuTopology>? published, CancellationToken stopping)
    {
        _stopping = stopping;
        _published = published;
        _topology = initial;
        _lastSeenOnline = initial.Online;
        _watchedOnlineFile = watchedOnlineFile;
        _watchInterval = watchInterval;
        Ready();
    }

    public IStash Stash { get; set; } = null!;

    public ITimerScheduler Timers { get; set; } = null!;

    private void Ready()
    {
        Receive<CpuTopologyProtocol.Register>(HandleRegister);
        Receive<CpuTopologyProtocol.Unregister>(HandleUnregister);
        Receive<CpuTopologyProtocol.GetTopology>(_ => Sender.Tell(new CpuTopologyProtocol.TopologyInfo(_version, _topology.Source, _topology.PossibleCount,
            _topology.Present.ToCpuListString(), _topology.Online.ToCpuListString(), _topology.NumaNodeCount, _queues.Select(q => q.Name).ToArray())));
        Receive<CpuTopologyProtocol.CpuOffline>(m => HandleHotplug(m.Cpu, online: false));
        Receive<CpuTopologyProtocol.CpuOnline>(m => HandleHotplug(m.Cpu, online: true));
        Receive<WatchOnline>(_ => HandleWatch());
    }

    // The host's online file is compared with what the watch saw last, not with the actor's own
    // topology: events sent by hand (a simulated hotplug on a real machine) are not undone by the
    // next read, and each change of the file becomes one event per CPU that changed.
    private void HandleWatch()
    {
        CpuSet now;
        try
        {
            if (!CpuSet.TryParse(File.ReadAllText(_watchedOnlineFile!).Trim(), out now) || now.IsEmpty)
            {
                return;
            }
        }
        catch (IOException)
        {
            return;
        }

        if (now.Equals(_lastSeenOnline))
        {
            return;
        }

        foreach (var cpu in _lastSeenOnline.ToArray().Where(c => !now.Contains(c)))
        {
            _log.Info("Host CPU {Cpu} went offline ({File}: {Online})", cpu, _watchedOnlineFile, now.ToCpuListString());
            Self.Tell(new CpuTopologyProtocol.CpuOffline(cpu), ActorRefs.NoSender);
        }

        foreach (var cpu in now.ToArray().Where(c => !_lastSeenOnline.Contains(c)))
        {
            _log.Info("Host CPU {Cpu} came online ({File}: {Online})", cpu, _watchedOnlineFile, now.ToCpuListString());
            Self.Tell(new CpuTopologyProtocol.CpuOnline(cpu), ActorRefs.NoSender);
        }

        _lastSeenOnline = now;
    }

    // A hotplug event re-maps every registered queue. While it runs everything else waits in the
    // stash: a queue registering or leaving, a topology query, the next hotplug event. So no one
    // sees a half-built mapping, and a queue cannot join or leave in the middle.
    private void HandleHotplug(int cpu, bool online)
    {
        CpuTopology next;
        try
        {
            next = _topology.WithOnline(cpu, online);
        }
        catch (Exception ex) when (ex is ArgumentOutOfRangeException or InvalidOperationException)
        {
            Sender.Tell(new Status.Failure(ex));
            return;
        }

        if (ReferenceEquals(next, _topology))
        {
            Sender.Tell(new CpuTopologyProtocol.TopologyChanged(_version, _topology.Online.ToCpuListString(), 0));
            return;
        }

        var replyTo = Sender;
        var queues = _queues.ToArray();
        Become(Remapping);
        _ = RemapAsync(queues, next, _stopping).PipeTo(Self,
            success: count => new RemapDone(next, count, cpu, online, replyTo),
            failure: ex => new RemapFailed(ex, replyTo));
    }

    private void Remapping()
    {
        Receive<RemapDone>(done =>
        {
            _topology = done.Topology;
            _version++;
            _published?.Invoke(_topology);
            _log.Info("CPU {Cpu} {State}: {Queues} queue(s) re-mapped, online CPUs {Online} (topology version {Version})",
                done.Cpu, done.Online ? "online" : "offline", done.Remapped, _topology.Online.ToCpuListString(), _version);
            done.ReplyTo.Tell(new CpuTopologyProtocol.TopologyChanged(_version, _topology.Online.ToCpuListString(), done.Remapped));
            Become(Ready);
            Stash.UnstashAll();
        });
        Receive<RemapFailed>(failed =>
        {
            if (failed.Error is OperationCanceledException && _stopping.IsCancellationRequested)
            {
                // The node stops: the remap gave up waiting for the queues (README, "CPU hotplug").
                // No fault of anyone's, and not the caller's cancellation: the call fails as every
                // call to a stopped block layer does.
                _log.Warning("A hotplug event was abandoned because the node is stopping; the topology stays at version {Version}", _version);
                failed.ReplyTo.Tell(new Status.Failure(new ObjectDisposedException(nameof(BlockLayer),
                    $"The node is stopping: the hotplug event was abandoned and the topology stays at version {_version}.")));
                Become(Ready);
                Stash.UnstashAll();
                return;
            }

            _log.Error(failed.Error, "Re-mapping after a hotplug event failed; the topology stays at version {Version}", _version);
            failed.ReplyTo.Tell(new Status.Failure(failed.Error));
            Become(Ready);
            Stash.UnstashAll();
        });
        Receive<RegisterRemapped>(done =>
        {
            if (done.Error is not null)
            {
                _log.Error(done.Error, "Mapping {Queue}, created during a re-map, to topology version {Version} failed", done.Queue, _version);
            }

            done.ReplyTo.Tell(new CpuTopologyProtocol.Registered(done.Queue, _version));
            Become(Ready);
            Stash.UnstashAll();
        });
        // The next watch tick reads the file again; no need to keep this one.
        Receive<WatchOnline>(_ => { });
        ReceiveAny(_ => Stash.Stash());
    }

    // Freeze every queue of a tag set and wait for it to drain (requests staged on a context whose
    // CPU leaves complete first), rebuild the set's map from the new topology, wire each queue to
    // it and unfreeze. Submissions meanwhile wait at the usage counter and are not lost.
    private static async Task<int> RemapAsync(RequestQueue[] queues, CpuTopology next, CancellationToken stopping)
    {
        var remapped = 0;
        foreach (var set in queues.GroupBy(q => q.TagSet))
        {
            var members = set.ToArray();
            foreach (var q in members)
            {
                q.Freeze();
            }

            try
            {
                await Task.WhenAll(members.Select(q => q.WaitFrozenAsync())).WaitAsync(stopping).ConfigureAwait(false);
                var map = set.Key.Remap(next);
                foreach (var q in members)
                {
                    q.Remap(map);
                    remapped++;
                }
            }
            finally
            {
                foreach (var q in members)
                {
                    q.Unfreeze();
                }
            }
        }

        return remapped;
    }

    private sealed record RemapDone(CpuTopology Topology, int Remapped, int Cpu, bool Online, IActorRef ReplyTo);

    private sealed record RemapFailed(Exception Error, IActorRef ReplyTo);

    protected override void PreStart()
    {
        _log.Info("CPU topology: {Topology}", _topology.Describe());
        _published?.Invoke(_topology);
        if (_watchedOnlineFile is not null && _watchInterval > TimeSpan.Zero)
        {
            _log.Info("Watching {File} every {Interval} ms for CPU hotplug", _watchedOnlineFile, _watchInterval.TotalMilliseconds);
            Timers.StartPeriodicTimer("watch-online", WatchOnline.Instance, _watchInterval);
        }
    }

    private sealed record WatchOnline
    {
        public static readonly WatchOnline Instance = new();
    }

    private void HandleRegister(CpuTopologyProtocol.Register register)
    {
        var queue = register.Queue;
        if (!_queues.Contains(queue))
        {
            _queues.Add(queue);
        }

        if (queue.Kind == QueueKind.MultiQueue && IsStale(queue))
        {
            // Built on an older topology: the device was created while a hotplug event re-mapped
            // the others (its registration waited in the stash meanwhile). Map its tag set to this
            // one before it serves, or it kept the old map, with queues active on offline CPUs,
            // until the next event.
            var set = _queues.Where(q => q.Kind == QueueKind.MultiQueue && q.TagSet == queue.TagSet).ToArray();
            var replyTo = Sender;
            Become(Remapping);
            _ = RemapAsync(set, _topology, _stopping).PipeTo(Self,
                success: _ => new RegisterRemapped(queue.Name, replyTo, null),
                failure: ex => new RegisterRemapped(queue.Name, replyTo, ex));
            return;
        }

        Sender.Tell(new CpuTopologyProtocol.Registered(queue.Name, _version));
    }

    private sealed record RegisterRemapped(string Queue, IActorRef ReplyTo, Exception? Error);

    // Its tag set's map is of another topology than this actor's, or the queue's hardware queues
    // are wired to another map than its set's (a queue joining a shared set built on the set's
    // map before a remap replaced it).
    private bool IsStale(RequestQueue queue)
    {
        var map = queue.TagSet.Map;
        if (map.Topology.Online.ToCpuListString() != _topology.Online.ToCpuListString())
        {
            return true;
        }

        var hctxs = queue.HardwareContexts;
        for (var i = 0; i < hctxs.Count; i++)
        {
            if (hctxs[i].CpuMask.ToCpuListString() != map.CpusOf(i).ToCpuListString())
            {
                return true;
            }
        }

        return false;
    }

    private void HandleUnregister(CpuTopologyProtocol.Unregister unregister)
    {
        _queues.Remove(unregister.Queue);
        Sender.Tell(new CpuTopologyProtocol.Unregistered(unregister.Queue.Name));
    }
}

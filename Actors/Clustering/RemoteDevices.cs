using System.Collections.Concurrent;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Nbd;
using Akka.Actor;
using Akka.Cluster;
using Akka.Event;
using AkkaCluster = Akka.Cluster.Cluster;

namespace ActorBlk.Actors.Clustering;

/// <summary>
/// Protocol of the actor that keeps this node's view of other nodes' devices
/// (<c>/user/actorblk-remote</c>): one local request queue per remote device opened here, driven by
/// the NBD client over the owner's export, shared by every handle and destroyed with the last.
/// Everything here is local to the node: nothing new crosses Akka remoting (the data travels over
/// NBD, discovery over the registry's Distributed Data).
/// </summary>
internal static class RemoteDevices
{
    /// <summary>The actor's name under <c>/user</c>.</summary>
    public const string ActorName = "actorblk-remote";

    /// <summary>
    /// Open (or share) the local queue of <paramref name="Device"/> for the handle numbered
    /// <paramref name="Handle"/> (unique on this node); reply <see cref="Opened"/> or a failure.
    /// </summary>
    public sealed record Open(ClusterDevice Device, DeviceOptions? Template, long Handle) : INoSerializationVerificationNeeded;

    /// <summary>
    /// Open (or share) the local queue of <paramref name="Device"/>, a device the registry does not
    /// show yet (only its name and node are known): reply <see cref="Opened"/> at once, with a target
    /// that has no queue until the device appears live with an NBD export, then connects one and
    /// raises its Reconnected (a mirror started degraded without the leg).
    /// </summary>
    public sealed record OpenMissing(ClusterDevice Device, DeviceOptions? Template, long Handle) : INoSerializationVerificationNeeded;

    /// <summary>The shared target of a remote device's handles.</summary>
    public sealed record Opened(RemoteDeviceTarget Target) : INoSerializationVerificationNeeded;

    /// <summary>
    /// The handle numbered <paramref name="Handle"/> of <paramref name="Id"/> closed, or its open was
    /// abandoned (the ask cancelled or timed out); reply <see cref="Closed"/> once the queue is
    /// released (when it was the last). The handle's reference is given back once, wherever it is:
    /// held, waiting for a connection, or waiting for a release to finish; a handle that holds none
    /// (its open failed, or never arrived) changes nothing.
    /// </summary>
    public sealed record Close(string Id, long Handle) : INoSerializationVerificationNeeded;

    /// <summary>Reply to <see cref="Close"/>.</summary>
    public sealed record Closed : INoSerializationVerificationNeeded
    {
        public static readonly Closed Instance = new();
    }

    /// <summary>
    /// Connects a local queue named by the second argument to the device's export, with the options
    /// of the third (the open's template); the default builds an NBD client driver.
    /// </summary>
    public delegate Task<IBlockDevice> Connector(ClusterDevice device, string localName, DeviceOptions template);

    /// <summary>
    /// How long a queue connected to a device created again under its name serves on while the
    /// registry lists neither incarnation (it showed the destroyed one last): a destroy and the
    /// re-creation reach a peer a gossip round or two apart.
    /// </summary>
    public static readonly TimeSpan OutdatedAbsenceHold = TimeSpan.FromSeconds(10);

    public static Props Props(BlockLayer layer, ConcurrentDictionary<string, string> imported, TimeSpan checkInterval, Connector? connect = null, PauseWatch? pause = null, OwnView? ownView = null) =>
        Akka.Actor.Props.Create(() => new RemoteDeviceActor(layer, imported, checkInterval, connect, pause, ownView));

    /// <summary>
    /// Whether this node's own failure detector holds <paramref name="node"/> unreachable: true or
    /// false when it monitors that node, null when it does not (a large cluster, where each node
    /// watches only some of the others: then the cluster's view is taken, as any member's detector
    /// sets it).
    /// </summary>
    public delegate bool? OwnView(Address node);

    /// <summary>The <see cref="OwnView"/> of <paramref name="system"/>'s cluster failure detector.</summary>
    public static OwnView OwnViewOf(ActorSystem system)
    {
        var detector = AkkaCluster.Get(system).FailureDetector;
        return node => detector.IsMonitoring(node) ? !detector.IsAvailable(node) : null;
    }

    /// <summary>
    /// How the actor finds that this node itself was paused (a stop signal, a long GC or VM pause):
    /// a timer of <paramref name="Clock"/> ticking every <paramref name="Tick"/> that fires more than
    /// <paramref name="Threshold"/> after the tick before. An owner found unreachable within
    /// <paramref name="Grace"/> after such a wake is most likely this node's own failure detector
    /// catching up on heartbeats it could not read while paused: its queues stay online for up to
    /// <paramref name="Grace"/> while it may become reachable again.
    /// </summary>
    public sealed record PauseWatch(TimeProvider Clock, TimeSpan Tick, TimeSpan Threshold, TimeSpan Grace)
    {
        /// <summary>
        /// The watch of <paramref name="system"/>'s failure detector: a tick every quarter of the
        /// heartbeat interval (250 ms by default), a pause past half the acceptable heartbeat pause
        /// (1.5 s), a grace of the acceptable heartbeat pause (3 s).
        /// </summary>
        public static PauseWatch Of(ActorSystem system)
        {
            var settings = AkkaCluster.Get(system).Settings;
            var acceptable = settings.FailureDetectorConfig.GetTimeSpan("acceptable-heartbeat-pause", TimeSpan.FromSeconds(3));
            var tick = settings.HeartbeatInterval / 4;
            return new PauseWatch(TimeProvider.System, tick, TimeSpan.FromTicks(Math.Max(acceptable.Ticks / 2, tick.Ticks * 4)), acceptable);
        }
    }
}

/// <summary>
/// Keeps each remote device's local queue in step with the registry and the owner's reachability.
/// The owner unreachable, or the device gone from the registry (destroyed, or its node removed):
/// the queue's NBD driver is retired, so the queue goes offline and every request in flight or
/// later fails with Offline (never a hang, and never a success for a write whose outcome is
/// unknown). The device published again (its node back at the same address, a new incarnation or
/// a new NBD endpoint) while the queue is offline: the queue is replaced by a new one connected to
/// the published endpoint, under the same local name, and every handle uses it from then on.
/// An owner found unreachable just after this node itself was paused is given a grace first (see
/// <see cref="RemoteDevices.PauseWatch"/>): reachable again within it, nothing goes offline.
/// </summary>
internal sealed class RemoteDeviceActor : ReceiveActor, IWithTimers
{
    private const string CheckTimer = "check";

    private readonly BlockLayer _layer;
    private readonly ConcurrentDictionary<string, string> _imported;
    private readonly TimeSpan _checkInterval;
    private readonly RemoteDevices.Connector _connect;
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly Dictionary<string, Slot> _slots = new(StringComparer.Ordinal);
    private readonly HashSet<string> _unreachable = new(StringComparer.Ordinal);
    // How the latest incarnation (uid) of each node (host:port) this actor saw end ended: left
    // (removed after Exiting) or not (downed, or removed after a crash).
    private readonly Dictionary<string, (long Uid, bool Left)> _ended = new(StringComparer.Ordinal);
    // Nodes found unreachable just after this node woke from a pause, each with the timer of its
    // grace: not in _unreachable (their queues stay online) until the grace ends.
    private readonly Dictionary<string, ITimer> _suspect = new(StringComparer.Ordinal);
    private readonly RemoteDevices.PauseWatch _pause;
    // Nodes the cluster holds unreachable (another member's failure detector found them so) while
    // this node's own detector, which monitors them, still hears them: their queues stay online,
    // and each check looks again (see HandleUnreachable).
    private readonly Dictionary<string, Member> _othersOnly = new(StringComparer.Ordinal);
    private readonly RemoteDevices.OwnView _ownView;
    private IDisposable? _watch;
    private ITimer? _pauseTimer;
    // The clock's timestamps of the last tick and of the last wake from a pause (null: none seen).
    private long _lastTick;
    private long? _wokeAt;
    private TimeSpan _pausedFor;

    public RemoteDeviceActor(BlockLayer layer, ConcurrentDictionary<string, string> imported, TimeSpan checkInterval, RemoteDevices.Connector? connect = null, RemoteDevices.PauseWatch? pause = null, RemoteDevices.OwnView? ownView = null)
    {
        _ownView = ownView ?? RemoteDevices.OwnViewOf(Context.System);
        _layer = layer;
        _imported = imported;
        _checkInterval = checkInterval;
        _connect = connect ?? ((device, name, template) => ConnectAsync(layer, device, name, template));
        _pause = pause ?? RemoteDevices.PauseWatch.Of(Context.System);
        Receive<RemoteDevices.Open>(HandleOpen);
        Receive<RemoteDevices.OpenMissing>(HandleOpenMissing);
        Receive<RemoteDevices.Close>(HandleClose);
        Receive<Built>(HandleBuilt);
        Receive<Released>(HandleReleased);
        Receive<SnapshotChanged>(_ => CheckAll());
        Receive<Check>(_ =>
        {
            LookAgainAtOthersOnly();
            CheckAll();
        });
        Receive<PauseTick>(HandlePauseTick);
        Receive<GraceOver>(HandleGraceOver);
        Receive<HoldEnded>(HandleHoldEnded);
        Receive<ClusterEvent.UnreachableMember>(u => HandleUnreachable(u.Member));
        Receive<ClusterEvent.ReachableMember>(r =>
        {
            var node = DeviceRegistryActor.NodeName(r.Member.Address);
            if (_othersOnly.Remove(node))
            {
                _log.Info("{0} is reachable again from every member; this node's queues of its devices stayed online", node);
            }

            if (ForgiveSuspect(node))
            {
                _log.Info("{0} is reachable again after this node's pause: its devices' local queues stayed online", node);
                CheckAll();
            }

            if (_unreachable.Remove(node))
            {
                CheckAll();
            }
        });
        Receive<ClusterEvent.MemberRemoved>(r =>
        {
            var node = DeviceRegistryActor.NodeName(r.Member.Address);
            _unreachable.Remove(node);
            _othersOnly.Remove(node);
            ForgiveSuspect(node);

            // Removed after leaving (Exiting), or after being downed: whether the devices it took
            // away with it were given up on purpose (see Planned).
            _ended[node] = (r.Member.UniqueAddress.Uid, r.PreviousStatus == MemberStatus.Exiting);
            CheckAll();
        });
        Receive<ClusterEvent.MemberDowned>(d =>
        {
            // The registry prunes a downed node's devices at once, maybe before its removal.
            _othersOnly.Remove(DeviceRegistryActor.NodeName(d.Member.Address));
            _ended[DeviceRegistryActor.NodeName(d.Member.Address)] = (d.Member.UniqueAddress.Uid, false);
            CheckAll();
        });
        Receive<ClusterEvent.CurrentClusterState>(_ => { });
    }

    // The cluster holds the member unreachable. Akka publishes that when any member's failure
    // detector finds it so, not only this node's: an outside partition audit cut a bench client
    // off from one owner alone, and another node, whose own heartbeats and NBD connection to that
    // owner were intact, took its queue offline and its mirror marked the leg faulty (a needless
    // resync). A member this node's own detector monitors and still hears keeps its queues online;
    // each check looks again, and they go offline once this node finds it unreachable too, or when
    // the resolver downs it (it downs both ends of a path that stays cut). A member this node does
    // not monitor is taken as the cluster says.
    private void HandleUnreachable(Member member)
    {
        var node = DeviceRegistryActor.NodeName(member.Address);
        if (_unreachable.Contains(node) || _suspect.ContainsKey(node))
        {
            return;
        }

        if (_ownView(member.Address) == false)
        {
            if (_othersOnly.TryAdd(node, member))
            {
                _log.Warning("{0} is unreachable from another member, not from this node, which still hears it: its devices' local queues on this node stay online while it does",
                    node);
            }

            return;
        }

        _othersOnly.Remove(node);

        if (JustWoke() is { } paused)
        {
            // This node's own failure detector, catching up on the heartbeats it could not
            // read while paused, takes healthy members for lost (an outside audit: a bench
            // stopped 8 s failed its 32 healthy I/Os with Offline, the owner reachable again
            // a second later). Wait for it to settle.
            _log.Warning("{0} is unreachable just after this node was paused for {1:F1} s: its devices' local queues stay online for up to {2} s while it may become reachable again",
                node, paused.TotalSeconds, _pause.Grace.TotalSeconds);
            _suspect[node] = OneShot(timer => new GraceOver(node, timer), _pause.Grace);
            return;
        }

        _unreachable.Add(node);
        CheckAll();
    }

    // Members only others held unreachable: those this node now finds unreachable too go the usual way.
    private void LookAgainAtOthersOnly()
    {
        foreach (var (node, member) in _othersOnly.ToList())
        {
            if (_ownView(member.Address) != false)
            {
                HandleUnreachable(member); // takes it out of _othersOnly
            }
        }
    }

    /// <inheritdoc />
    public ITimerScheduler Timers { get; set; } = null!;

    protected override void PreStart()
    {
        var self = Self;
        _watch = _layer.ClusterDevices.Watch(s => self.Tell(new SnapshotChanged(s)));
        AkkaCluster.Get(Context.System).Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsEvents,
            typeof(ClusterEvent.IReachabilityEvent), typeof(ClusterEvent.MemberRemoved), typeof(ClusterEvent.MemberDowned));
        if (_checkInterval > TimeSpan.Zero)
        {
            Timers.StartPeriodicTimer(CheckTimer, Check.Instance, _checkInterval);
        }

        // The clock's timer, not the scheduler's: what it measures is the clock's, and a spec's
        // virtual clock then both moves the time and fires the ticks.
        var clock = _pause.Clock;
        _lastTick = clock.GetTimestamp();
        _pauseTimer = clock.CreateTimer(_ => self.Tell(new PauseTick(clock.GetTimestamp())), null, _pause.Tick, _pause.Tick);
    }

    protected override void PostStop()
    {
        _pauseTimer?.Dispose();
        foreach (var slot in _slots.Values)
        {
            EndHold(slot);
        }

        foreach (var timer in _suspect.Values)
        {
            timer.Dispose();
        }

        _watch?.Dispose();
        AkkaCluster.Get(Context.System).Unsubscribe(Self);
    }

    // A tick that fired long after the one before: this node was paused (its timers did not run).
    private void HandlePauseTick(PauseTick tick)
    {
        var gap = _pause.Clock.GetElapsedTime(_lastTick, tick.At);
        _lastTick = Math.Max(_lastTick, tick.At);
        if (gap > _pause.Threshold)
        {
            _wokeAt = tick.At;
            _pausedFor = gap;
            // A warning where it matters: this node holds other nodes' devices.
            _log.Log(_slots.Count > 0 ? LogLevel.WarningLevel : LogLevel.DebugLevel,
                "This node was paused for {0:F1} s (stopped, or a long GC or VM pause): a member found unreachable within {1} s is given {1} s to become reachable again before its devices' local queues go offline",
                new object[] { gap.TotalSeconds, _pause.Grace.TotalSeconds });
        }

        if (_checkInterval <= TimeSpan.Zero && _othersOnly.Count > 0)
        {
            // Without the periodic check (remote-check-interval 0: checks only when the registry
            // changes) nothing else looks again at a member only others held unreachable, and one
            // that then died for this node too kept its queues online until it was downed.
            LookAgainAtOthersOnly();
        }
    }

    // How long this node was paused when it woke within the grace before now; null when it was
    // not. A pause whose late tick is not here yet (the failure detector's event came first)
    // counts from now.
    private TimeSpan? JustWoke()
    {
        var now = _pause.Clock.GetTimestamp();
        var sinceTick = _pause.Clock.GetElapsedTime(_lastTick, now);
        if (sinceTick > _pause.Threshold)
        {
            _wokeAt = now;
            _pausedFor = sinceTick;
            return sinceTick;
        }

        return _wokeAt is { } woke && _pause.Clock.GetElapsedTime(woke, now) <= _pause.Grace ? _pausedFor : null;
    }

    // The grace of a node found unreachable after this node's pause ended, and it is unreachable
    // still: its queues go offline now, as at once without a pause.
    private void HandleGraceOver(GraceOver over)
    {
        if (!_suspect.TryGetValue(over.Node, out var timer) || !ReferenceEquals(timer, over.Timer))
        {
            // Reachable again (or removed) since: nothing to do.
            return;
        }

        _suspect.Remove(over.Node);
        timer.Dispose();
        _log.Warning("{0} is still unreachable {1} s after this node's pause", over.Node, _pause.Grace.TotalSeconds);
        _unreachable.Add(over.Node);
        CheckAll();
    }

    // Whether the node was waiting out its grace; it no longer is.
    private bool ForgiveSuspect(string node)
    {
        if (!_suspect.Remove(node, out var timer))
        {
            return false;
        }

        timer.Dispose();
        return true;
    }

    // Unreachable, or found so after this node's pause and still within its grace.
    private bool CutOff(string node) => _unreachable.Contains(node) || _suspect.ContainsKey(node);

    /// <summary>The local queue name of a remote device: <c>name-host-port</c>, or the name and a hash when that is too long.</summary>
    internal static string LocalName(ClusterDevice device)
    {
        var node = new string([.. device.Node.Select(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '_' ? c : '-')]);
        var name = $"{device.Name}-{node}";
        if (name.Length <= ClusterDevice.MaxNameLength)
        {
            return name;
        }

        // FNV-1a: the same id gives the same name on every run.
        var hash = 2166136261u;
        foreach (var c in device.Id)
        {
            hash = (hash ^ c) * 16777619;
        }

        var prefix = device.Name.Length > ClusterDevice.MaxNameLength - 9 ? device.Name[..(ClusterDevice.MaxNameLength - 9)] : device.Name;
        return $"{prefix}-{hash:x8}";
    }

    private void HandleOpen(RemoteDevices.Open open)
    {
        var id = open.Device.Id;
        if (_slots.TryGetValue(id, out var slot) && !slot.Closing)
        {
            if (slot.Target is { Device: not null } target)
            {
                slot.Held.Add(open.Handle);
                Sender.Tell(new RemoteDevices.Opened(target));
            }
            else
            {
                // Being built, or missing: then this open waits for the device to connect, or fails
                // at once when it cannot connect now (not live, or its node unreachable).
                var waiter = new Waiter(Sender, open.Handle);
                slot.Waiters.Add(waiter);
                CheckSlot(slot);
                if (slot.Building is null && slot.Target is { Device: null })
                {
                    slot.Waiters.Remove(waiter);
                    Sender.Tell(new Status.Failure(new ClusterDeviceNotFoundException($"{id} is not live with an NBD export on a reachable node yet.")));
                }
            }

            return;
        }

        if (slot is { Closing: true })
        {
            // The last handle is being closed: the next open waits for the release, then builds afresh.
            slot.Reopeners.Add(new Reopener(open, open.Handle, Sender));
            return;
        }

        slot = new Slot(open.Device, LocalName(open.Device), open.Template);
        slot.Waiters.Add(new Waiter(Sender, open.Handle));
        _slots[id] = slot;
        Build(slot, open.Device);
    }

    private void HandleOpenMissing(RemoteDevices.OpenMissing open)
    {
        var id = open.Device.Id;
        if (_slots.TryGetValue(id, out var slot) && !slot.Closing)
        {
            if (slot.Target is { } target)
            {
                slot.Held.Add(open.Handle);
                Sender.Tell(new RemoteDevices.Opened(target));
            }
            else
            {
                slot.Waiters.Add(new Waiter(Sender, open.Handle));
            }

            return;
        }

        if (slot is { Closing: true })
        {
            slot.Reopeners.Add(new Reopener(open, open.Handle, Sender));
            return;
        }

        slot = new Slot(open.Device, LocalName(open.Device), open.Template) { Target = new RemoteDeviceTarget(null) };
        slot.Held.Add(open.Handle);
        _slots[id] = slot;
        _log.Info("{0} is not in the cluster's registry: its handle waits for it to appear", id);
        Sender.Tell(new RemoteDevices.Opened(slot.Target));
        CheckSlot(slot);
    }

    // A handle's reference is given back by its number, never by counting: an abandoned open's
    // Close may come before or after its open was answered, failed or deferred, and a count
    // decremented both here and by a failed connection's waiters went one too low (the slot was
    // then never released once the last real handle closed, and kept reconnecting a queue nobody
    // held).
    private void HandleClose(RemoteDevices.Close close)
    {
        if (!_slots.TryGetValue(close.Id, out var slot))
        {
            Sender.Tell(RemoteDevices.Closed.Instance);
            return;
        }

        if (!slot.Held.Remove(close.Handle) && slot.Waiters.RemoveAll(w => w.Handle == close.Handle) == 0)
        {
            // Not held: deferred behind a release (then it is dropped), failed, or never arrived.
            slot.Reopeners.RemoveAll(r => r.Handle == close.Handle);
            Sender.Tell(RemoteDevices.Closed.Instance);
            return;
        }

        if (slot.Refs > 0)
        {
            Sender.Tell(RemoteDevices.Closed.Instance);
            return;
        }

        slot.Closing = true;
        slot.Closers.Add(Sender);
        if (slot.Building is null && !slot.Swapping)
        {
            Release(slot);
        }
    }

    // Connects a new local queue to the device's export, off the actor (connecting may take the
    // NBD connect timeout), then registers it with the block layer under the slot's local name.
    private void Build(Slot slot, ClusterDevice device)
    {
        var generation = ++slot.Generation;
        slot.Building = device;
        var name = slot.LocalName;
        var template = slot.Template ?? new DeviceOptions();
        _imported[name] = device.Id;
        var self = Self;
        var connect = _connect;
        Task.Run(() => connect(device, name, template)).ContinueWith(t => new Built(slot, generation, device, t.IsCompletedSuccessfully ? t.Result : null,
            t.IsCompletedSuccessfully ? null : FailureOf(t)), TaskScheduler.Default).PipeTo(self);
    }

    // What a build threw, as thrown: a cancellation (BlockLayerStoppingException is one) ends
    // the task Canceled with no Exception, and a bare TaskCanceledException in its place named
    // neither the device nor the node's stop (a review found the stop's quiet path never taken).
    private static Exception FailureOf(Task<IBlockDevice> built)
    {
        try
        {
            built.GetAwaiter().GetResult();
            return new InvalidOperationException("the device was not created");
        }
#pragma warning disable CA1031 // Whatever the build threw is its outcome, reported to the waiters.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            return ex;
        }
    }

    private static async Task<IBlockDevice> ConnectAsync(BlockLayer layer, ClusterDevice device, string name, DeviceOptions template)
    {
        if (layer.Stopping.IsCancellationRequested)
        {
            // Refused anyway once the node stops: no NBD connection to the owner for it.
            throw new BlockLayerStoppingException(name, layer.Stopping);
        }

        if (string.IsNullOrEmpty(device.NbdEndpoint))
        {
            throw new ClusterDeviceNotFoundException($"{device.Id} has no NBD export: its node serves no NBD (actorblk.nbd.listen = off?).");
        }

        // One per hardware queue, which the possible CPUs cap (the owner may have more of both);
        // a connection past them would carry no I/O (DeviceBuilder.FitConnections).
        var possible = Math.Max(layer.CurrentTopology.PossibleCount, 1);
        var connections = Math.Clamp(template.Connections > 1 ? template.Connections : device.HardwareQueues, 1, Math.Min(64, possible));
        if (template.Connections > connections)
        {
            layer.System.Log.Warning("{0}: connections {1} reduced to {2}: one connection per hardware queue, and hardware queues are capped at the possible CPUs", name, template.Connections, connections);
        }

        var uri = NbdUri.Parse(device.NbdEndpoint); // well-formed: ClusterDevice.IsWellFormed
        NbdClientDriver driver;
        try
        {
            driver = new NbdClientDriver(new NbdClientOptions { Uri = uri, Connections = connections, TlsCa = string.IsNullOrEmpty(template.TlsCa) ? layer.RemoteTlsCa : template.TlsCa, TlsVerify = template.TlsVerify }, name);
        }
        catch (IOException ex)
        {
            throw new BlockDeviceOpenException(name, uri.ToString(), OpenFailure.Other, 0, $"{device.Id}: {ex.Message}");
        }

        var options = template with
        {
            Name = name,
            Driver = "null",
            Uri = null,
            Path = null,
            TlsCa = null,
            SubmitQueues = connections,
            Connections = 1,
            PollQueues = 0,
            // An nbd device's default (30 s, as the kernel's), not the null device's 5 s.
            IoTimeoutMs = template.IoTimeoutMs > 0 ? template.IoTimeoutMs : ActorBlk.Hardware.Tags.TagSet.DefaultTimeoutMs,
            IoPoll = false,
            SharedTags = false,
            MemoryBacked = false,
            ReadOnly = template.ReadOnly || driver.ReadOnly || device.ReadOnly,
        };
        return await layer.CreateDeviceAsync(options, driver).ConfigureAwait(false);
    }

    private void HandleBuilt(Built built)
    {
        var slot = built.Slot;
        if (built.Generation != slot.Generation)
        {
            return;
        }

        slot.Building = null;
        if (built.Device is null)
        {
            var error = built.Error ?? new InvalidOperationException("the device was not created");
            if (slot.Target is null)
            {
                // The first open failed: every waiter gets the error and the slot goes.
                _log.Log(error is BlockLayerStoppingException ? LogLevel.DebugLevel : LogLevel.WarningLevel, "Opening {0} failed: {1}", new object[] { built.Entry.Id, error.Message });
                foreach (var waiter in slot.Waiters)
                {
                    waiter.Sender.Tell(new Status.Failure(error));
                }

                slot.Waiters.Clear();
                foreach (var closer in slot.Closers)
                {
                    closer.Tell(RemoteDevices.Closed.Instance);
                }

                _slots.Remove(built.Entry.Id);
                _imported.TryRemove(slot.LocalName, out _);
                RetryReopeners(slot);
                return;
            }

            // Reconnecting failed: the old (offline) queue stays, and the next periodic check
            // (not this one: that would retry in a tight loop) tries again. An open waiting for a
            // missing device's first queue fails (and gives its reference back).
            // Tried again at every check while the device stays published: the same failure is
            // logged once (a leg refusing connections wrote two lines a second for as long as it did).
            var what = slot.Target.Device is null ? "Connecting missing" : "Reconnecting";
            if (error is BlockLayerStoppingException)
            {
                // This node stops: its handles go with it, there is nothing to try again.
                _log.Debug("{0} {1} not tried: {2}", what, built.Entry.Id, error.Message);
            }
            else if (slot.LastFailure != error.Message)
            {
                var again = _checkInterval > TimeSpan.Zero ? $"every {_checkInterval.TotalMilliseconds} ms" : "when the registry changes";
                _log.Warning("{0} {1} failed: {2}; trying again {3} (logged again when the failure changes)", what, built.Entry.Id, error.Message, again);
            }
            else
            {
                _log.Debug("{0} {1} failed again: {2}", what, built.Entry.Id, error.Message);
            }

            slot.LastFailure = error.Message;
            foreach (var waiter in slot.Waiters)
            {
                waiter.Sender.Tell(new Status.Failure(error));
            }

            slot.Waiters.Clear();
            if (slot.Closing || slot.Refs == 0)
            {
                // The failed waiters held the last references (every handle closed while they waited).
                slot.Closing = true;
                Release(slot);
            }

            return;
        }
        else if (slot.Target is { } target)
        {
            target.Replace(built.Device, this);
            slot.Entry = built.Entry;
            _log.Info("{0} reconnected to {1} as {2}{3}", built.Entry.Id, built.Entry.NbdEndpoint, built.Device.Name, slot.LastFailure is null ? string.Empty : " (after failing: " + slot.LastFailure + ")");
            slot.LastFailure = null;
        }
        else
        {
            slot.Target = new RemoteDeviceTarget(built.Device);
            slot.Entry = built.Entry;
            _log.Info("Opened {0} at {1} as {2}", built.Entry.Id, built.Entry.NbdEndpoint, built.Device.Name);
        }

        foreach (var waiter in slot.Waiters)
        {
            slot.Held.Add(waiter.Handle);
            waiter.Sender.Tell(new RemoteDevices.Opened(slot.Target!));
        }

        slot.Waiters.Clear();
        if (slot.Closing)
        {
            Release(slot);
            return;
        }

        CheckSlot(slot);
    }

    // The last handle closed: retire the driver (so nothing reconnects) and destroy the queue.
    private void Release(Slot slot)
    {
        var device = slot.Target?.Device;
        if (device is null)
        {
            Self.Tell(new Released(slot));
            return;
        }

        var layer = _layer;
        var self = Self;
        var log = _log;
        Task.Run(async () =>
        {
            try
            {
                await layer.DestroyDeviceAsync(device.Name).ConfigureAwait(false);
            }
            catch (KeyNotFoundException)
            {
                // Already gone (the node is shutting down).
            }
#pragma warning disable CA1031 // the slot is released whatever happened; the failure is said
            catch (Exception ex)
#pragma warning restore CA1031
            {
                // The node stopping (BlockLayerStoppingException, a timeout of the drain): the
                // queue goes with the node; anything else is logged rather than dropped.
                log.Warning("{0}: destroying its local queue {1} failed: {2}", slot.Entry.Id, device.Name, ex.Message);
            }
        }).ContinueWith(_ => new Released(slot), TaskScheduler.Default).PipeTo(self);
    }

    private void HandleReleased(Released released)
    {
        var slot = released.Slot;
        if (slot.Swapping)
        {
            // An offline queue was destroyed to make room for its replacement.
            slot.Swapping = false;
            if (!slot.Closing)
            {
                if (Snapshot.FirstOrDefault(d => d.Id == slot.Entry.Id) is { } entry)
                {
                    Build(slot, entry);
                }

                return;
            }
        }

        EndHold(slot);
        _slots.Remove(slot.Entry.Id);
        _imported.TryRemove(slot.LocalName, out _);
        _log.Info("Closed {0}", slot.Entry.Id);
        foreach (var closer in slot.Closers)
        {
            closer.Tell(RemoteDevices.Closed.Instance);
        }

        RetryReopeners(slot);
    }

    private void RetryReopeners(Slot slot)
    {
        foreach (var reopener in slot.Reopeners)
        {
            Self.Tell(reopener.Open, reopener.Sender);
        }

        slot.Reopeners.Clear();
    }

    // The registry's current snapshot, not the one of the last change message: an open may be
    // asked for by a caller that saw a snapshot whose change message has not arrived here yet.
    private IReadOnlyList<ClusterDevice> Snapshot => _layer.ClusterDevices.Snapshot;

    private void CheckAll()
    {
        foreach (var slot in _slots.Values.ToArray())
        {
            CheckSlot(slot);
        }
    }

    private void CheckSlot(Slot slot)
    {
        if (slot.Building is not null || slot.Closing || slot.Swapping || slot.Target is not { } target)
        {
            return;
        }

        if (CoordinatedShutdown.Get(Context.System).ShutdownReason is not null)
        {
            // The node is going down and destroys every device: build nothing new.
            return;
        }

        if (target.Device is null)
        {
            // Missing: connect its first queue once the registry shows it live and exported.
            var appeared = Snapshot.FirstOrDefault(d => d.Id == slot.Entry.Id);
            if (appeared is not null && appeared.State == ClusterDeviceStates.Live && !string.IsNullOrEmpty(appeared.NbdEndpoint) && !CutOff(appeared.Node))
            {
                Log(slot, "{0} appeared at {1}; connecting its local queue {2}", appeared.Id, appeared.NbdEndpoint, slot.LocalName);
                Build(slot, appeared);
            }

            return;
        }

        var queue = target.Device.Queue;
        var driver = queue.Driver as NbdClientDriver;
        var entry = Snapshot.FirstOrDefault(d => d.Id == slot.Entry.Id);
        if (entry is null && !_unreachable.Contains(slot.Entry.Node) && HoldsNewerDevice(slot, queue, driver))
        {
            return;
        }

        EndHold(slot);
        if (entry is null || _unreachable.Contains(slot.Entry.Node))
        {
            var why = entry is not null ? $"its node {slot.Entry.Node} is unreachable"
                : _layer.ClusterDevices.HasFailed(slot.Entry.Node, slot.Entry.NodeUid) ? $"the block layer of its node {slot.Entry.Node} failed"
                : "the device left the cluster's registry";
            if (driver is { RetiredReason: null })
            {
                _log.Warning("{0}: {1}; its local queue {2} goes offline", slot.Entry.Id, why, target.Device.Name);
                // The owner destroying its device (or leaving the cluster gracefully) is an event
                // it chose; a node that cannot be reached, or was downed, is a failure.
                driver.Retire(why, planned: entry is null && Planned(slot.Entry));
            }

            // Also when the driver had given itself up already (the reconnect met another device).
            if (driver is not null || queue.IsOffline)
            {
                Disconnect(slot, target);
            }

            return;
        }

        target.PublishedReadOnly = entry.ReadOnly;
        var moved = entry.NbdEndpoint != slot.Entry.NbdEndpoint;
        if (entry.State != ClusterDeviceStates.Live || string.IsNullOrEmpty(entry.NbdEndpoint))
        {
            return;
        }

        if (moved && driver is { RetiredReason: null })
        {
            _log.Warning("{0} moved to {1}; its local queue {2} goes offline and reconnects", slot.Entry.Id, entry.NbdEndpoint, target.Device.Name);
            driver.Retire($"the device moved to {entry.NbdEndpoint}", planned: true);
            Disconnect(slot, target);
            return;
        }

        if (!entry.ReadOnly && queue.ReadOnly && slot.Template?.ReadOnly != true && driver is { RetiredReason: null })
        {
            // Connected while the device was read-only (its entry said so, or the export's
            // handshake did, and the connection keeps those flags), and its owner made it writable
            // since: the queue is replaced by one connected now, as for a move. Before, the handle
            // stayed read-only for good (a mirror refused to re-add the leg; a review).
            _log.Info("{0} is writable again; its local queue {1}, connected read-only, reconnects", slot.Entry.Id, target.Device.Name);
            driver.Retire("the device became writable", planned: true);
            Disconnect(slot, target);
            return;
        }

        if (!queue.IsOffline && driver is not { RetiredReason: not null })
        {
            // Still serving (its driver reconnects by itself while the export answers).
            slot.Entry = entry;
            return;
        }

        // Offline, or its driver given up (it never serves again, even before a request found out
        // and took the queue offline: an idle handle waited for one), while the registry shows
        // the device live and its node reachable: replace the queue. Its handles hear that it went
        // first, when nothing above did (the NBD reconnect found another device under the name, or
        // the server stayed away past the back-off): a mirror with no I/O to meet the Offline
        // learns it only so, and otherwise took the new device's Reconnected for its own leg
        // coming back in sync.
        Disconnect(slot, target);
        slot.Swapping = true;
        if (entry.NodeUid != slot.Entry.NodeUid)
        {
            Log(slot, "{0} is published again at {1}; replacing its offline queue {2}", entry.Id, entry.NbdEndpoint, target.Device.Name);
        }
        else
        {
            // The same incarnation: its node may be dead and not yet marked unreachable, so this
            // is a retry, not news of the device.
            Log(slot, "{0}: its local queue {2} went offline while the registry still shows it live at {1}; connecting a new queue", entry.Id, entry.NbdEndpoint, target.Device.Name);
        }

        Release(slot);
    }

    // Whether the registry's absence of the device may be an outdated view of the queue's own
    // device, so the queue keeps serving a while (true) rather than going offline: the registry
    // last showed one incarnation of the device (slot.Entry's disk sequence number), its owner
    // still publishes and withdrew that one, and the queue's NBD connection reached another one
    // under the name (the export names another number), the device created again. A destroy and a re-creation are published a gossip round or two
    // apart, so a peer may see the device gone in between: a queue already connected to the new
    // device was retired for it, a leg on it failed and was copied whole once more (the flaky
    // MirrorRemoteLegRecreatedSpec). Held OutdatedAbsenceHold at most (its timer's message ends
    // it): if the registry still lists nothing by then, the queue goes
    // offline as for any absence. Held only while every connection is open: if the new device goes
    // too, its export closes them and the next check acts on the absence. The numbers compared are
    // of one server process (ServerDiskSeq is 0 once a reconnect reached another one: a restarted
    // owner's numbers start again, and its device is another one).
    private bool HoldsNewerDevice(Slot slot, ActorBlk.Hardware.Queues.RequestQueue queue, NbdClientDriver? driver)
    {
        if (driver is not { RetiredReason: null, Connected: true } || queue.IsOffline || slot.Entry.DiskSeq == 0 || slot.HoldOver
            || driver.ServerDiskSeq is var connected && (connected == 0 || connected == slot.Entry.DiskSeq)
            || !_layer.ClusterDevices.HasEntry(slot.Entry.Node, slot.Entry.NodeUid)
            || _layer.ClusterDevices.HasFailed(slot.Entry.Node, slot.Entry.NodeUid))
        {
            return false;
        }

        if (slot.HoldTimer is null)
        {
            slot.HoldTimer = OneShot(timer => new HoldEnded(slot, timer), RemoteDevices.OutdatedAbsenceHold);
            _log.Info("{0}: the registry no longer lists the device it showed, but its local queue {1} is connected to the device created again under the name; the queue serves on and waits up to {2} s for the registry to list that one",
                slot.Entry.Id, slot.LocalName, RemoteDevices.OutdatedAbsenceHold.TotalSeconds);
        }

        return true;
    }

    // A timer of the pause watch's clock that tells this actor, once, the message made with the
    // timer itself (so that a stale one is told apart from the current).
    private ITimer OneShot(Func<ITimer, object> message, TimeSpan due)
    {
        var self = Self;
        ITimer? timer = null;
        timer = _pause.Clock.CreateTimer(_ => self.Tell(message(timer!)), null, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        timer.Change(due, Timeout.InfiniteTimeSpan);
        return timer;
    }

    private static void EndHold(Slot slot)
    {
        slot.HoldTimer?.Dispose();
        slot.HoldTimer = null;
        slot.HoldOver = false;
    }

    private void HandleHoldEnded(HoldEnded ended)
    {
        // A hold that ended meanwhile (its slot released too) disposed of its timer and forgot it.
        if (ReferenceEquals(ended.Slot.HoldTimer, ended.Timer))
        {
            ended.Slot.HoldOver = true;
            CheckSlot(ended.Slot);
        }
    }

    // Whether a device missing from the registry was given up by its node on purpose. Its
    // owner's entry (that incarnation: address and uid) still standing, the owner withdrew the
    // device itself: destroyed, or destroyed with the rest at a graceful shutdown. The whole
    // entry gone, it was pruned with its node, which is planned only for a node that left (this
    // actor saw it removed after Exiting, or the cluster shows it leaving); a node downed, or
    // removed after a crash, or still Up in a view that lags the prune (an owner killed and
    // restarted at once: another member downed it and the prune came first) is a failure.
    private bool Planned(ClusterDevice device)
    {
        if (CutOff(device.Node) || _layer.ClusterDevices.HasFailed(device.Node, device.NodeUid))
        {
            // Cut off, or its block layer failed (it withdraws its devices as it shuts down, but
            // did not choose to).
            return false;
        }

        if (_layer.ClusterDevices.HasEntry(device.Node, device.NodeUid))
        {
            return true;
        }

        if (_ended.TryGetValue(device.Node, out var ended) && ended.Uid == device.NodeUid)
        {
            return ended.Left;
        }

        foreach (var member in AkkaCluster.Get(Context.System).State.Members)
        {
            if (member.UniqueAddress.Uid == device.NodeUid && DeviceRegistryActor.NodeName(member.Address) == device.Node)
            {
                return member.Status is MemberStatus.Leaving or MemberStatus.Exiting;
            }
        }

        return false;
    }

    // Raises the handles' Disconnected once per queue: a queue retired above and found offline
    // at a later check is not reported twice.
    private void Disconnect(Slot slot, RemoteDeviceTarget target)
    {
        if (target.Device is { } device && slot.DisconnectedQueue != device.Queue.DiskSeq)
        {
            slot.DisconnectedQueue = device.Queue.DiskSeq;
            target.Disconnect(this);
        }
    }

    // An attempt's line: information the first time, debug while the attempts keep failing alike.
    private void Log(Slot slot, string format, object arg1, object arg2, object arg3)
    {
        if (slot.LastFailure is null)
        {
            _log.Info(format, arg1, arg2, arg3);
        }
        else
        {
            _log.Debug(format, arg1, arg2, arg3);
        }
    }

    private sealed class Slot(ClusterDevice entry, string localName, DeviceOptions? template)
    {
        public ClusterDevice Entry { get; set; } = entry;

        public string LocalName { get; } = localName;

        public DeviceOptions? Template { get; } = template;

        public RemoteDeviceTarget? Target { get; set; }

        /// <summary>References: handles answered, and opens waiting for a connection.</summary>
        public int Refs => Held.Count + Waiters.Count;

        /// <summary>The handles answered with this slot's target and not closed since.</summary>
        public HashSet<long> Held { get; } = [];

        public int Generation { get; set; }

        public ClusterDevice? Building { get; set; }

        public bool Closing { get; set; }

        public bool Swapping { get; set; }

        /// <summary>The disk sequence number of the queue whose loss the handles were told of (Disconnected), 0 for none.</summary>
        public ulong DisconnectedQueue { get; set; }

        /// <summary>While the queue serves on through the registry's absence of an older incarnation (<see cref="HoldsNewerDevice"/>): the timer that ends that hold; null otherwise.</summary>
        public ITimer? HoldTimer { get; set; }

        /// <summary>True once the hold's time is up: the next check acts on the absence.</summary>
        public bool HoldOver { get; set; }

        /// <summary>The last failed (re)connection's message; null once one succeeds.</summary>
        public string? LastFailure { get; set; }

        public List<Waiter> Waiters { get; } = [];

        public List<IActorRef> Closers { get; } = [];

        public List<Reopener> Reopeners { get; } = [];
    }

    private sealed record Waiter(IActorRef Sender, long Handle);

    private sealed record Reopener(object Open, long Handle, IActorRef Sender);

    private sealed record Built(Slot Slot, int Generation, ClusterDevice Entry, IBlockDevice? Device, Exception? Error);

    private sealed record Released(Slot Slot);

    /// <summary>The hold of <paramref name="Slot"/> (its timer, so that a stale one is told apart) is up.</summary>
    private sealed record HoldEnded(Slot Slot, ITimer Timer);

    private sealed record SnapshotChanged(IReadOnlyList<ClusterDevice> Devices);

    private sealed record Check
    {
        public static readonly Check Instance = new();
    }

    /// <summary>A tick of the pause watch, fired at the clock's timestamp <paramref name="At"/>.</summary>
    private sealed record PauseTick(long At);

    /// <summary>The grace of <paramref name="Node"/> (its timer, so that a stale one is told apart) ended.</summary>
    private sealed record GraceOver(string Node, ITimer Timer);
}

using ActorBlk.Actors.Serialization;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using Akka.Actor;
using Akka.Event;

namespace ActorBlk.Actors;

/// <summary>
/// Protocol of the request-queue actor (one per disk): it owns the disk's software-context,
/// hardware-queue and driver actors, registers the disk with its tag set and the CPU topology,
/// routes I/O submitted as messages, and tears everything down on unregistration.
/// </summary>
public static class RequestQueueProtocol
{
    /// <summary>Sent to the parent once the disk is registered and serving I/O.</summary>
    public sealed record Ready(string Name) : IActorBlkMessage;

    /// <summary>Unregister the disk: drain, fail what is left, release everything; reply <see cref="Unregistered"/>.</summary>
    public sealed record Unregister : IActorBlkMessage
    {
        /// <summary>The instance.</summary>
        public static readonly Unregister Instance = new();
    }

    /// <summary>The disk is gone; <paramref name="FailedRequests"/> had to be failed with Offline.</summary>
    public sealed record Unregistered(string Name, int FailedRequests) : IActorBlkMessage;

    /// <summary>
    /// An I/O submitted as a message. It is handed to the software context of <paramref name="Cpu"/>
    /// (any when negative); the sender receives <see cref="SoftwareContextProtocol.Completed"/> or
    /// <see cref="SoftwareContextProtocol.Rejected"/>.
    /// </summary>
    public sealed record Io(long Id, BlockOp Op, long Offset, int Length, byte[]? Data = null, RequestFlags Flags = RequestFlags.None, int Cpu = -1) : IActorBlkMessage;

    /// <summary>Asks for a summary of the disk.</summary>
    public sealed record GetInfo : IActorBlkQuery
    {
        /// <summary>The instance.</summary>
        public static readonly GetInfo Instance = new();
    }

    /// <summary>A summary of the disk.</summary>
    public sealed record Info(string Name, string Driver, long Capacity, int LogicalBlockSize, int HardwareQueues, int PossibleCpus,
        string Dispatch, string TagSet, bool Registered, bool Dying, long InFlight, long Timeouts, long DeviceErrors, long Resets, string Health) : IActorBlkMessage;

    /// <summary>Props of the actor serving <paramref name="device"/>, supervised as <paramref name="options"/> say.</summary>
    internal static Props Props(BlockDevice device, IActorRef tagSet, IActorRef topology, BlockLayer layer, DeviceOptions options) =>
        Akka.Actor.Props.Create(() => new RequestQueueActor(device, tagSet, topology, layer, options));
}

/// <summary>The request-queue actor.</summary>
internal sealed class RequestQueueActor : UntypedActor, IWithUnboundedStash, IWithTimers
{
    private const string ReopenTimer = "reopen";
    private const string CancelRecoveryTimer = "cancel-recovery";

    /// <summary>
    /// How long a removal lets a reset or reopen in progress run before it cancels it
    /// (<see cref="IBlockDriver.CancelRecovery"/>): a reconnect to a server that answers takes
    /// milliseconds and gives back the requests it held, which then drain; one to a server that
    /// accepts and never answers would hold the removal for its connect timeout.
    /// </summary>
    internal static readonly TimeSpan RecoveryGrace = TimeSpan.FromSeconds(1);

    private readonly BlockDevice _device;
    private readonly RequestQueue _queue;
    private readonly IActorRef _tagSet;
    private readonly IActorRef _topology;
    private readonly BlockLayer _layer;
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private IActorRef[] _contexts = [];
    private IActorRef[] _hardwareQueues = [];
    // The driver actors, one per hardware queue, and which of them are alive.
    private IActorRef[] _drivers = [];
    private bool[] _driverAlive = [];
    private MailboxRuntime? _mailbox;
    private bool _joined;
    private bool _registered;
    private int _nextCpu;
    private long _timeouts;
    private long _deviceErrors;
    private IActorRef? _unregisterReplyTo;
    private int _failedAtShutdown;

    // Set when the device was found gone while it drained (its requests were failed by going
    // offline); what that failed is counted among the removal's failures.
    private bool _lostWhileRemoving;
    private int _failedWhileRemoving;

    // GoOffline runs not yet reported (WentOffline), and whether the tag set is to be left once
    // they are: the reply then counts what they failed (a continuation on the offline task could
    // run before PipeTo's, and Left come back first).
    private int _offlinePending;
    private bool _leaveAfterOffline;
    private readonly DeviceOptions _options;
    private readonly Queue<(DateTimeOffset At, int Count)> _timeoutWindow = new();

    // The reopen attempt running on the thread pool, if any.
    private Task<ReopenDone>? _reopening;
    private readonly Queue<DateTimeOffset> _stops = new();

    // Tells this actor when the node begins to stop (BlockLayer.Stopping), so that a reopen in
    // progress gives up at once rather than hold the shutdown's phases.
    private CancellationTokenRegistration _stoppingRegistration;
    private int _timeoutsInWindow;
    private long _resets;
    private int _reopenAttempt;
    private DeviceHealth _health = DeviceHealth.Online;

    // Taking the queue offline, on the thread pool (GoOffline); teardown starts after it.
    private Task _offline = Task.CompletedTask;
    private bool _stoppingDrivers;

    // Set when the supervisor stops a driver actor because the device is gone; cleared when the
    // driver actors start again (a reopen). Until then no driver actor is restarted.
    private bool _goneDecided;
    private readonly Queue<DateTimeOffset> _restarts = new();
    private bool _shutdownDone;

    // Set when the supervisor restarts a driver actor (a reset; OnRestart) until the reset is done (ResetDone)
    // or fresh driver actors start (a reopen of a device lost meanwhile): the timeouts and device
    // errors meanwhile are covered by the reset, not held against the device (HandleTimeouts,
    // HandleDeviceError).
    private bool _resetting;

    // Set once the supervisor gives the device up for a driver bug (HandleDriverBug): the driver
    // actors then stopped lead to offline, not to a reopen.
    private bool _givingUpForBug;

    public RequestQueueActor(BlockDevice device, IActorRef tagSet, IActorRef topology, BlockLayer layer, DeviceOptions options)
    {
        _device = device;
        _queue = device.Queue;
        _tagSet = tagSet;
        _topology = topology;
        _layer = layer;
        _options = options;
    }

    public IStash Stash { get; set; } = null!;

    public ITimerScheduler Timers { get; set; } = null!;

    private enum DeviceHealth
    {
        Online,
        Reopening,
        Offline,
    }

    // The driver actors are the device under supervision. A transient device error restarts the
    // one it was reported to, which resets the whole device (DeviceDriverActor.PostRestart); a
    // device that is gone stops it, and the others with it. More than max-resets restarts of any
    // of them within reset-window stop it as well: the limit is the device's, not each queue's.
    protected override SupervisorStrategy SupervisorStrategy()
    {
        var supervision = _layer.Settings.Supervision;
        var scheduler = Context.System.Scheduler;
        // A device error is expected: one line with the device, the directive and the cause, and
        // the stack only for anything else (a bug). Akka's own failure log is off for the same reason.
        return new DeviceSupervisorStrategy(OnRestart, (child, ex) =>
        {
            var directive = ex is BlockDeviceErrorException { DeviceGone: true } ? Directive.Stop : Directive.Restart;
            if (directive == Directive.Stop)
            {
                _goneDecided = true;
            }
            else if (_goneDecided && DriverIndex(child) >= 0)
            {
                // Another driver actor of this device was stopped as gone: every one of them is
                // being stopped, so a reset now (its quiesce racing the stop) would only get in
                // the way of the reopen. The device is handled as gone once all are dead. Not a
                // hardware-queue or software-context actor (a driver bug in Timeout while the
                // device was lost or reopened): it is no reset and is counted below, as at any
                // other time. Stopped, nothing started it again, and after a reopen its queue's
                // timeouts were never scanned (a review).
                directive = Directive.Stop;
            }
            else
            {
                var now = scheduler.Now;
                while (_restarts.Count > 0 && now - _restarts.Peek() > supervision.ResetWindow)
                {
                    _restarts.Dequeue();
                }

                if (_restarts.Count >= supervision.MaxResets && DriverIndex(child) < 0)
                {
                    // A hardware-queue or software-context actor, restarted after a driver bug (a
                    // Timeout that threw): it is the queue's timeout scanner (and, with no driver
                    // actor alive, its dispatcher), so it lives on, restarted; the device is given
                    // up instead. Stopped, as Akka's own count (of wall-clock time) did at the
                    // fourth restart, its requests were never scanned again and never completed.
                    if (!_givingUpForBug)
                    {
                        _givingUpForBug = true;
                        Self.Tell(GiveUpForDriverBug.Instance);
                    }
                }
                else if (_restarts.Count >= supervision.MaxResets)
                {
                    directive = Directive.Stop;
                }
                else
                {
                    _restarts.Enqueue(now);
                }
            }

            if (ex is BlockDeviceErrorException)
            {
                // Gone, and supervision will try to reopen it (the next line says so; giving it up
                // is the error, logged then), or its owner gave it up on purpose: a warning.
                var expected = ex is BlockDeviceErrorException { DeviceGone: true } && (MayReopen() || _queue.Driver.PlannedLoss is not null);
                _log.Log(expected ? LogLevel.WarningLevel : LogLevel.ErrorLevel, "{Device}: supervisor: {Directive} after {Error}: {Message}", new object[] { _queue.Name, directive, ex.GetType().Name, ex.Message });
            }
            else
            {
                _log.Error(ex, "{Device}: supervisor: {Directive} after {Error}: {Message}", _queue.Name, directive, ex.GetType().Name, ex.Message);
            }

            return directive;
        });
    }

    // A child is about to be restarted. Only a driver actor's restart is a reset (its PostRestart
    // resets the whole device and reports ResetDone, which ends _resetting): a hardware-queue or
    // software-context actor restarted after a bug (a driver's Timeout that threw) runs no reset
    // and reports nothing, and set for it the flag stayed on for good, so that timeouts never
    // reset the device again and every device error was dropped (a review).
    private void OnRestart(IActorRef child)
    {
        if (DriverIndex(child) >= 0)
        {
            _resetting = true;
        }
    }

    // OneForOneStrategy whose decider cannot see the failed child: this one's decider sees it, and
    // it tells the actor which child it restarts (ProcessFailure runs on the actor's thread, after
    // the decider). The decider alone decides, on the scheduler's clock: Akka's own limit (counted
    // per child, in wall-clock time) would stop a child whatever the decider said.
    private sealed class DeviceSupervisorStrategy(Action<IActorRef> onRestart, Func<IActorRef, Exception, Directive> decider)
        : OneForOneStrategy(-1, -1, _ => Directive.Restart, loggingEnabled: false)
    {
        protected override Directive Handle(IActorRef child, Exception exception) => decider(child, exception);

        public override void ProcessFailure(IActorContext context, bool restart, IActorRef child, Exception cause, Akka.Actor.Internal.ChildRestartStats stats, IReadOnlyCollection<Akka.Actor.Internal.ChildRestartStats> children)
        {
            if (restart)
            {
                onRestart(child);
            }

            base.ProcessFailure(context, restart, child, cause, stats, children);
        }
    }

    // Whether losing the device leads to reopen attempts rather than straight offline (see the
    // driver actors' Terminated handling; max-reopens may still give it up, with its own error).
    private bool MayReopen() =>
        (_queue.Driver.Features & DriverFeatures.Reopenable) != 0 && _layer.Settings.Supervision.ReopenAttempts > 0;

    protected override void PreStart()
    {
        var mailbox = _layer.ModeOf(_queue) == DispatchMode.Mailbox;
        StartDrivers();
        _contexts = _queue.SoftwareContexts.Select(ctx => Context.ActorOf(OnCpu(SoftwareContextProtocol.Props(ctx, _device), ctx.Cpu), $"ctx-{ctx.Cpu}")).ToArray();
        _hardwareQueues = _queue.HardwareContexts
            .Select(h => Context.ActorOf(HardwareQueue.Props(h, _layer.Settings.TimeoutScanInterval), $"hctx-{h.Index}"))
            .ToArray();

        // Mailbox dispatch: each hardware queue's driver actor is its dispatcher.
        _mailbox = mailbox
            ? new MailboxRuntime(_contexts, _drivers, _layer.Settings.DrainTimeout, _queue.SoftwareContexts.Select(ctx => ThreadOf(ctx.Cpu)).ToArray())
            : null;
        IQueueRuntime runtime = _mailbox ?? (IQueueRuntime)new RingRuntime(_layer.SoftIrq, _layer.Settings.RingSpin);
        _queue.Events = new QueueEvents(Self, _log, _queue.Name);
        _queue.EndIoFaulted += OnEndIoFaulted;
        _queue.Start(runtime);
        _queue.Register();

        _tagSet.Tell(new TagSetProtocol.Join(_queue));
        _topology.Tell(new CpuTopologyProtocol.Register(_queue));
        _stoppingRegistration = _layer.Stopping.UnsafeRegister(static self => ((IActorRef)self!).Tell(NodeStopping.Instance), Self);
        Become(Initializing);
    }

    protected override void OnReceive(object message) => Unhandled(message);

    protected override void PostStop()
    {
        _stoppingRegistration.Dispose();
        _queue.EndIoFaulted -= OnEndIoFaulted;
        base.PostStop();
    }

    // A caller's end_io threw (caught where its bio completed; the I/O counted as completed).
    // Logged from the completion context, the first time with the stack and then at every power
    // of two, so a call-back that always throws cannot flood the log.
    private void OnEndIoFaulted(RequestQueue queue, long count, Exception error)
    {
        if ((count & (count - 1)) != 0)
        {
            return;
        }

        if (count == 1)
        {
            _log.Warning(error, "{Device}: an end_io call-back threw; the I/O counts as completed (call-backs must not throw)", queue.Name);
        }
        else
        {
            _log.Warning("{Device}: {Count} end_io call-backs have thrown; the last: {Error}", queue.Name, count, error.Message);
        }
    }

    // ------------------------------------------------------------------ behaviours

    private void Initializing(object message)
    {
        switch (message)
        {
            case TagSetProtocol.Joined:
                _joined = true;
                break;
            case CpuTopologyProtocol.Registered:
                _registered = true;
                break;
            default:
                Stash.Stash();
                return;
        }

        if (_joined && _registered)
        {
            _log.Info("Registered {Device}: {Description}, {Dispatch} dispatch, {Cpus} software contexts",
                _queue.Name, _device.ToString(), _queue.Runtime.Mode, _contexts.Length);
            Context.Parent.Tell(new RequestQueueProtocol.Ready(_queue.Name));
            Stash.UnstashAll();
            Become(Active);
        }
    }

    private void Active(object message)
    {
        switch (message)
        {
            case RequestQueueProtocol.Io io:
                var cpu = io.Cpu >= 0 && io.Cpu < _contexts.Length ? io.Cpu : NextCpu();
                _contexts[cpu].Forward(new SoftwareContextProtocol.Submit(io.Id, io.Op, io.Offset, io.Length, io.Data, io.Flags));
                break;
            case RequestQueueProtocol.GetInfo:
                Sender.Tell(Info());
                break;
            case HardwareQueue.TimeoutsExpired t:
                HandleTimeouts(t);
                break;
            case HardwareQueue.DeviceFaulted f:
                HandleDeviceError(f.HardwareQueue, f.Error);
                break;
            case DeviceError e:
                HandleDeviceError(e.HardwareQueue, e.Error);
                break;
            case ScanNow scan:
                _hardwareQueues[scan.HardwareQueue].Tell(HardwareQueue.ScanTimeouts.Instance);
                break;
            case DeviceDriver.ResetDone done:
                // A reset device starts with a clean count, as a reopened one does (the driver
                // actor cleared the poll faults before the queue ran again).
                _resetting = false;
                _timeoutWindow.Clear();
                _timeoutsInWindow = 0;
                CountReset(done, removing: false);
                break;
            case Terminated t when DriverIndex(t.ActorRef) >= 0:
                HandleDriverTerminated(DriverIndex(t.ActorRef));
                break;
            case TryReopen:
                HandleReopen();
                break;
            case GiveUpForDriverBug:
                HandleDriverBug();
                break;
            case NodeStopping when _health == DeviceHealth.Reopening:
                // The node stops: no attempt will reopen the device for it, and the requests that
                // wait fail Offline now, as a destroy during a reopen fails them. Before, they
                // waited for the attempts to give up or for the shutdown's service-unbind phase to
                // time out (the NBD server's stop waits for every request it passed on): an outside
                // audit's SIGTERM during a reopen took 5.9-7.9 s, the phase's warning included.
                Timers.Cancel(ReopenTimer);
                _log.Warning("{Device}: the node is stopping while the device is being reopened; the requests waiting for it fail with Offline", _queue.Name);
                _queue.Unquiesce();
                GoOffline();
                CancelRecovery();
                break;
            case NodeStopping:
                break;
            case ReopenDone done:
                HandleReopenDone(done);
                break;
            case WentOffline done:
                _offlinePending--;
                LogOffline(done);
                break;
            case RequestQueueProtocol.Unregister:
                Timers.Cancel(ReopenTimer);
                _unregisterReplyTo = Sender;
                _log.Info("Unregistering {Device}", _queue.Name);

                if (_health == DeviceHealth.Reopening)
                {
                    // The requests wait for a device no attempt will reopen now: they fail Offline
                    // at once rather than after the drain timeout, and the attempt gives up.
                    _log.Warning("{Device}: destroyed while being reopened; the requests waiting for it fail with Offline", _queue.Name);
                    _queue.Unquiesce();
                    _lostWhileRemoving = true;
                    GoOffline();
                    CancelRecovery();
                }
                else
                {
                    // A reset in progress (or one that starts during the drain) gets a grace to
                    // give the requests it holds back, then gives up rather than hold the removal
                    // for its connect timeout.
                    Timers.StartSingleTimer(CancelRecoveryTimer, CancelRecoveryNow.Instance, RecoveryGrace);
                }

                _topology.Tell(new CpuTopologyProtocol.Unregister(_queue));
                Become(Unregistering);
                break;
            default:
                Unhandled(message);
                break;
        }
    }

    private void Unregistering(object message)
    {
        switch (message)
        {
            case CpuTopologyProtocol.Unregistered:
                // After going offline, if that still runs: teardown fails what is left, once.
                var queue = _queue;
                var drain = _layer.UnregisterDrainTimeout;
                _offline.ContinueWith(_ => queue.ShutdownAsync(drain), CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default)
                    .Unwrap()
                    .PipeTo(Self, success: failed => new ShutdownDone(failed));
                break;
            case WentOffline done:
                _offlinePending--;
                LogOffline(done);
                if (_lostWhileRemoving)
                {
                    _failedWhileRemoving += done.Failed;
                }

                if (_leaveAfterOffline && _offlinePending == 0)
                {
                    _leaveAfterOffline = false;
                    _tagSet.Tell(new TagSetProtocol.Leave(_queue));
                }

                break;
            case CancelRecoveryNow:
                CancelRecovery();
                break;
            case ShutdownDone done:
                // The driver actor runs exit_hctx when it stops (mailbox dispatch): it must be
                // gone before the driver is disposed, as the kernel exits hardware contexts
                // before the driver frees itself. A reset still running is not waited for.
                _failedAtShutdown = done.Failed;
                _shutdownDone = true;
                Timers.Cancel(CancelRecoveryTimer);
                CancelRecovery();
                if (AllDriversDead)
                {
                    LeaveTagSet();
                }
                else
                {
                    StopDrivers();
                }

                break;
            case Terminated t when DriverIndex(t.ActorRef) >= 0:
                MarkDriverDead(DriverIndex(t.ActorRef));
                if (!_shutdownDone)
                {
                    // The device was found gone while it drained (a reset the removal cancelled,
                    // a connection lost), or just before: a driver actor stopped as gone while
                    // the device was still active had the others stopped, and the destroy came
                    // before they were all dead, so the reopen (or offline) that the last one's
                    // death would have started never came. Nothing will dispatch or complete
                    // what the driver held, so it fails with Offline now rather than at the
                    // drain timeout (an outside leak audit: one destroy in ~250 of an NBD client
                    // device whose server was just killed waited the whole drain timeout). Only
                    // the teardown stops drivers after _shutdownDone; after it, which failed
                    // everything already, there is nothing left to fail.
                    if (!_stoppingDrivers)
                    {
                        StopDrivers();
                    }

                    if (_health != DeviceHealth.Offline)
                    {
                        _log.Warning("{Device}: the device was lost while being removed; the requests it held fail with Offline", _queue.Name);
                        _lostWhileRemoving = true;
                        GoOffline();
                    }
                }

                if (_shutdownDone && AllDriversDead)
                {
                    LeaveTagSet();
                }

                break;
            case HardwareQueue.DeviceFaulted f when !_stoppingDrivers && !_shutdownDone:
                // The requests drain through a device that may still fail: the round that faulted
                // stopped its hardware queue, and only the reset starts it again. Dropped here,
                // the stopped queue held its requests until the drain timeout, and for ever when a
                // hotplug re-map waited for this queue to drain ahead of the removal (an outside
                // audit: destroy, hotplug and I/O hung under crash faults and CPU hotplug).
                HandleDeviceError(f.HardwareQueue, f.Error);
                break;
            case DeviceError e when !_stoppingDrivers && !_shutdownDone:
                HandleDeviceError(e.HardwareQueue, e.Error);
                break;
            case DeviceDriver.ResetDone done:
                // The device drains through it, and may still fail: what it reports is handled again.
                _resetting = false;
                CountReset(done, removing: true);
                break;
            case TryReopen:
            case ReopenDone:
            case GiveUpForDriverBug:
            case HardwareQueue.DeviceFaulted:
            case DeviceError:
                // The drivers are being stopped, or the teardown failed what was left: nothing
                // dispatches any more.
                break;
            case TagSetProtocol.Left:
                // A reopen attempt may still be connecting (up to its connect timeout): the driver
                // is disposed once it returns, never under it.
                var driver = _queue.Driver;
                if (_reopening is { IsCompleted: false } attempt)
                {
                    attempt.ContinueWith(_ => driver.Dispose(), CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default);
                }
                else
                {
                    driver.Dispose();
                }

                if (_failedAtShutdown > 0)
                {
                    _log.Warning("Unregistered {Device}: {Failed} request(s) did not drain within {Timeout} and were failed with Offline",
                        _queue.Name, _failedAtShutdown, _layer.UnregisterDrainTimeout);
                }

                if (_failedWhileRemoving > 0)
                {
                    _log.Warning("Unregistered {Device}: {Failed} request(s) the device held when it was lost were failed with Offline", _queue.Name, _failedWhileRemoving);
                }

                if (_failedAtShutdown + _failedWhileRemoving == 0)
                {
                    _log.Info("Unregistered {Device}: every request completed", _queue.Name);
                }

                var reply = new RequestQueueProtocol.Unregistered(_queue.Name, _failedAtShutdown + _failedWhileRemoving);
                _unregisterReplyTo?.Tell(reply);
                if (!Equals(_unregisterReplyTo, Context.Parent))
                {
                    Context.Parent.Tell(reply);
                }

                Context.Stop(Self);
                break;
            case Status.Failure failure:
                _log.Error(failure.Cause, "Unregistering {Device} failed", _queue.Name);
                throw failure.Cause;
            case RequestQueueProtocol.Io io:
                Sender.Tell(new SoftwareContextProtocol.Rejected(io.Id, InvalidRequestReason.NotSupported, $"{_queue.Name}: the device is being removed."));
                break;
            case RequestQueueProtocol.GetInfo:
                Sender.Tell(Info());
                break;
            case HardwareQueue.TimeoutsExpired t:
                _timeouts += t.Expired;
                _queue.Stats.CountTimeouts(t.Expired);
                break;
            case NodeStopping:
                break; // the removal in progress ends what waits
            default:
                Unhandled(message);
                break;
        }
    }

    // ------------------------------------------------------------------ helpers

    // One driver actor per hardware queue, driver-0, driver-1, ... (their names are free again
    // once all of them are terminated, which a reopen waits for). A blocking driver's actor has a
    // thread of its own only in mailbox dispatch, where it calls QueueRq: in ring dispatch the
    // dispatch loops call it and the actor only supervises (a reset now and then), and a pinned
    // thread per hardware queue from the device's creation on cost a node of 1,000 memory-backed
    // null devices of 4 hardware queues 4,000 idle threads (an outside scale audit).
    private void StartDrivers()
    {
        var blocking = (_queue.Driver.Features & DriverFeatures.Blocking) != 0 && _layer.ModeOf(_queue) == DispatchMode.Mailbox;
        _drivers = new IActorRef[_queue.HardwareContexts.Count];
        _driverAlive = new bool[_drivers.Length];
        for (var i = 0; i < _drivers.Length; i++)
        {
            var props = DeviceDriver.Props(_queue, i, blocking);
            _drivers[i] = Context.Watch(Context.ActorOf(blocking ? props : OnCpu(props, _queue.HardwareContexts[i].HomeCpu), $"driver-{i}"));
            _driverAlive[i] = true;
        }

        _stoppingDrivers = false;
        _goneDecided = false;

        // Fresh driver actors (a reopen): a reset that was stopped as the device was lost never
        // reported itself done.
        _resetting = false;
        _queue.ClearPollFaults();
    }

    // Mailbox dispatch: the actors of one CPU share that CPU's dispatcher thread (MailboxDispatcher,
    // actorblk.mailbox.dispatcher = per-cpu); ring dispatch leaves them on the default dispatcher.
    private string? MailboxDispatcherId(int cpu) =>
        _layer.ModeOf(_queue) == DispatchMode.Mailbox && _layer.Settings.MailboxDispatcher
            ? MailboxDispatcherConfigurator.For(Context.System, cpu, _layer.Settings.MailboxPin && !_queue.Topology.IsSimulated && CpuAffinity.IsSupported,
                _layer.Settings.MailboxSpin, _layer.Settings.MailboxThroughput, _layer.Settings.MailboxBusySpin)
            : null;

    private Props OnCpu(Props props, int cpu) => MailboxDispatcherId(cpu) is { } id ? props.WithDispatcher(id) : props;

    private MailboxDispatcher? ThreadOf(int cpu) => MailboxDispatcherId(cpu) is { } id ? Context.System.Dispatchers.Lookup(id) as MailboxDispatcher : null;

    // Leaves the tag set once going offline, if that still runs (a device lost while it drained),
    // has reported what it failed: the reply counts it, and the driver is disposed after Left,
    // never under that.
    private void LeaveTagSet()
    {
        if (_offlinePending > 0)
        {
            _leaveAfterOffline = true;
            return;
        }

        _tagSet.Tell(new TagSetProtocol.Leave(_queue));
    }

    // IBlockDriver.CancelRecovery, which a driver of any provenance implements: a throw is logged,
    // not let out into the removal.
    private void CancelRecovery()
    {
        try
        {
            _queue.Driver.CancelRecovery();
        }
        catch (Exception ex)
        {
            _log.Warning(ex, "{Driver} driver of {Device}: cancelling its recovery failed", _queue.Driver.Kind, _queue.Name);
        }
    }

    private void StopDrivers()
    {
        _stoppingDrivers = true;
        for (var i = 0; i < _drivers.Length; i++)
        {
            if (_driverAlive[i])
            {
                Context.Stop(_drivers[i]);
            }
        }
    }

    private int DriverIndex(IActorRef actor) => Array.IndexOf(_drivers, actor);

    private bool AllDriversDead => Array.TrueForAll(_driverAlive, alive => !alive);

    // A dead driver actor's hardware queue is dispatched by its hardware-queue actor, which keeps
    // requests waiting (or fails them once the device is offline). Nothing was lost with the
    // actor: a round runs within one message, and staged requests stay in the queue.
    private void MarkDriverDead(int index)
    {
        _driverAlive[index] = false;
        _mailbox?.SetDispatcher(index, _hardwareQueues[index]);
    }

    // The driver actor a failure is reported to: the one of the hardware queue it happened on,
    // else (device-wide) the first one alive.
    private IActorRef? DriverFor(int hctx)
    {
        if (hctx >= 0 && hctx < _drivers.Length && _driverAlive[hctx])
        {
            return _drivers[hctx];
        }

        var alive = Array.IndexOf(_driverAlive, true);
        return alive >= 0 ? _drivers[alive] : null;
    }

    // The supervisor stopped a driver actor: the device is gone. The other driver actors are
    // stopped too, and the device is handled as gone once none is left (so no dispatch round runs
    // any more when it is reopened or set offline).
    private void HandleDriverTerminated(int index)
    {
        MarkDriverDead(index);
        if (!_stoppingDrivers)
        {
            StopDrivers();
        }

        if (AllDriversDead)
        {
            HandleDriverStopped();
        }
    }

    // A device error stops the hardware queue it happened on; the driver actor rethrows it so its
    // supervisor decides (reset, or give the device up).
    private void CountReset(DeviceDriver.ResetDone done, bool removing)
    {
        _resets++;
        _queue.Stats.CountReset();
        var reason = removing ? $"{done.Reason}' while being removed" : $"{done.Reason}'";
        _log.Info("{Device}: reset after '{Reason}: {Requeued} request(s) requeued, {Failed} failed after {Retries} retries; reset {Resets} of this device",
            _queue.Name, reason, done.Requeued, done.Failed, _queue.MaxRetries, _resets);
    }

    private void HandleDeviceError(int hctx, Exception error)
    {
        _deviceErrors++;
        if (_health != DeviceHealth.Online)
        {
            return;
        }

        if (_resetting)
        {
            // Covered by the reset under way, which replaces the whole device, as a driver actor
            // inside a reset drops what it is told. Told to the driver actor that resets, it waited
            // in its mailbox behind the reset and, once the device was back, stopped it for a loss
            // of what the reset had already replaced (an NBD connection its timeout had killed,
            // reported lost after the reset began): a reopen, closing the fresh connection, and one
            // more stop toward max-reopens.
            _log.Info("{Device} hctx {Index}: device error during a reset, which covers it ({Error}: {Message})",
                _queue.Name, hctx, error.GetType().Name, error.Message);
            return;
        }

        _log.Warning("{Device} hctx {Index}: device error ({Error}: {Message}); reporting it to the supervisor",
            _queue.Name, hctx, error.GetType().Name, error.Message);
        DriverFor(hctx)?.Tell(new DeviceDriver.Fail(hctx, error));
    }

    // Timeouts are counted in a sliding window; reset_after_timeouts of them within timeout_window
    // mean the device is hung: it is reset through its supervisor. Only a driver a reset can take
    // requests back from (Resettable) is reset for timeouts: the file driver's I/O is in the
    // kernel, its reset does nothing, and its timers just re-arm, as the kernel's loop device
    // waits (an outside audit: a file device under a short io_timeout counted its re-armed timers
    // into resets and its no-op resets into max-resets, and went offline). Nor while a reset
    // runs: the requests expiring then are the ones it is about to take back (as nvme_timeout
    // re-arms while its controller resets). Counted, they asked for a second reset, which waited
    // in the driver actor's mailbox behind the running one (a reconnect to an NBD server frozen
    // for longer than io_timeout) and reset the device again as soon as it was back.
    private void HandleTimeouts(HardwareQueue.TimeoutsExpired t)
    {
        _timeouts += t.Expired;
        _queue.Stats.CountTimeouts(t.Expired);
        var limit = _options.ResetAfterTimeouts;
        if (limit <= 0 || _health != DeviceHealth.Online || _resetting || (_queue.Driver.Features & DriverFeatures.Resettable) == 0)
        {
            return;
        }

        var now = Context.System.Scheduler.Now;
        var window = TimeSpan.FromMilliseconds(_options.TimeoutWindowMs);
        _timeoutWindow.Enqueue((now, t.Expired));
        _timeoutsInWindow += t.Expired;
        while (_timeoutWindow.Count > 0 && now - _timeoutWindow.Peek().At > window)
        {
            _timeoutsInWindow -= _timeoutWindow.Dequeue().Count;
        }

        if (_timeoutsInWindow >= limit)
        {
            var message = $"{_queue.Name}: {_timeoutsInWindow} request(s) timed out within {window.TotalSeconds:0.###} s (reset_after_timeouts = {limit})";
            _timeoutWindow.Clear();
            _timeoutsInWindow = 0;
            DriverFor(t.HardwareQueue)?.Tell(new DeviceDriver.Fail(-1, new DeviceTimeoutsException(message)));
        }
    }

    // More than max-resets restarts within reset-window, the last of an actor that is not a
    // driver actor (a driver bug: its Timeout threw): the device is given up. Its driver actors
    // are stopped, as for a gone device, and once none is left it goes offline without reopen
    // attempts (a reopen would not mend the driver's code). A driver that keeps throwing in its
    // Timeout would otherwise hold its requests re-armed for ever.
    private void HandleDriverBug()
    {
        if (_health == DeviceHealth.Offline)
        {
            return;
        }

        _log.Error("{Device}: more than max-resets ({Max}) restarts of its actors within {Window} s after driver bugs; giving the device up",
            _queue.Name, _layer.Settings.Supervision.MaxResets, _layer.Settings.Supervision.ResetWindow.TotalSeconds);
        if (_health == DeviceHealth.Reopening)
        {
            // No driver actor lives; the attempt under way gives up, and the requests waiting fail.
            Timers.Cancel(ReopenTimer);
            _queue.Unquiesce();
            GoOffline();
            CancelRecovery();
            return;
        }

        if (AllDriversDead)
        {
            GoOffline();
        }
        else if (!_stoppingDrivers)
        {
            StopDrivers();
        }
    }

    // The supervisor stopped the driver: the device is gone. Dispatch stops; a driver that can
    // reopen gets attempts with back-off while requests wait, else the device goes offline.
    private void HandleDriverStopped()
    {
        if (_givingUpForBug)
        {
            // HandleDriverBug stopped them: offline, no reopen.
            GoOffline();
            return;
        }

        var supervision = _layer.Settings.Supervision;
        var now = Context.System.Scheduler.Now;
        _stops.Enqueue(now);
        while (_stops.Count > 0 && now - _stops.Peek() > supervision.ResetWindow)
        {
            _stops.Dequeue();
        }

        if (_stops.Count > supervision.MaxReopens)
        {
            _log.Error("{Device}: the device stopped {Stops} times within {Window} s (max-reopens = {Max}); giving it up",
                _queue.Name, _stops.Count, supervision.ResetWindow.TotalSeconds, supervision.MaxReopens);
            GoOffline();
            return;
        }

        // A node that is stopping reopens nothing: the device goes offline at once.
        if ((_queue.Driver.Features & DriverFeatures.Reopenable) != 0 && supervision.ReopenAttempts > 0 && !_layer.Stopping.IsCancellationRequested)
        {
            _health = DeviceHealth.Reopening;
            _reopenAttempt = 0;
            _ = _queue.QuiesceAsync();
            var delay = _layer.Settings.Supervision.ReopenDelay(0);
            _log.Warning("{Device}: the device is gone; reopening in {Delay} ms (attempt 1 of {Attempts}), requests wait",
                _queue.Name, delay.TotalMilliseconds, _layer.Settings.Supervision.ReopenAttempts);
            Timers.StartSingleTimer(ReopenTimer, TryReopen.Instance, delay);
            return;
        }

        GoOffline();
    }

    // An attempt runs on the thread pool, never on this actor's thread: reopening may take the
    // driver's connect timeout (an NBD server that accepts and never answers: 10 s per attempt),
    // and meanwhile this actor must answer the device's info, a destroy, and the node's shutdown
    // (an outside audit: a shutdown during a reopen timed out its phase and 32 requests never
    // completed; a destroy waited for the attempt, then the whole drain timeout).
    private void HandleReopen()
    {
        if (_health != DeviceHealth.Reopening || _reopening is not null)
        {
            return;
        }

        var driver = _queue.Driver;
        _reopening = Task.Run(driver.Reopen)
            .ContinueWith(t => new ReopenDone(t.Exception?.GetBaseException()), CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default);
        _reopening.PipeTo(Self);
    }

    private void HandleReopenDone(ReopenDone done)
    {
        _reopening = null;
        if (_health != DeviceHealth.Reopening)
        {
            return;
        }

        var supervision = _layer.Settings.Supervision;
        if (done.Error is { } ex)
        {
            _reopenAttempt++;

            // Given up while waiting (a cluster device whose owner left the registry), no later
            // attempt can succeed: the requests that wait fail now, not after the remaining back-off.
            var givenUp = (_queue.Driver.Features & DriverFeatures.Reopenable) == 0;
            if (givenUp || _reopenAttempt >= supervision.ReopenAttempts)
            {
                if (givenUp)
                {
                    var level = _queue.Driver.PlannedLoss is null ? LogLevel.ErrorLevel : LogLevel.WarningLevel;
                    _log.Log(level, "{Device}: the device cannot be reopened any more ({Message}); it goes offline", new object[] { _queue.Name, ex.Message });
                }
                else
                {
                    _log.Error("{Device}: reopen attempt {Attempt} failed ({Message}); giving the device up", _queue.Name, _reopenAttempt, ex.Message);
                }

                _queue.Unquiesce();
                GoOffline();
                return;
            }

            var delay = supervision.ReopenDelay(_reopenAttempt);
            _log.Warning("{Device}: reopen attempt {Attempt} failed ({Message}); next attempt in {Delay} ms",
                _queue.Name, _reopenAttempt, ex.Message, delay.TotalMilliseconds);
            Timers.StartSingleTimer(ReopenTimer, TryReopen.Instance, delay);
            return;
        }

        // Reopened: a fresh device; whatever the old one held is taken back and retried, and the
        // timeouts counted against the old one are forgotten.
        _timeoutWindow.Clear();
        _timeoutsInWindow = 0;
        var (requeued, failed) = _queue.ReclaimInFlight(BlockStatus.IoError);
        StartDrivers();
        for (var i = 0; i < _drivers.Length; i++)
        {
            _mailbox?.SetDispatcher(i, _drivers[i]);
        }

        foreach (var hctx in _queue.HardwareContexts)
        {
            hctx.StartQueue();
        }

        _health = DeviceHealth.Online;
        _queue.Unquiesce();
        _log.Info("{Device}: reopened after {Attempts} attempt(s); {Requeued} request(s) requeued, {Failed} failed",
            _queue.Name, _reopenAttempt + 1, requeued, failed);
    }

    // Takes the queue offline on the thread pool, never on this actor's thread: failing the
    // requests in flight completes them where it runs, and a completion runs its caller's code
    // there, a stacked device's continuation and whatever it submits next (a mirror ends its write
    // on the surviving leg, and the bench's end_io submits the next write, which a local leg may
    // complete inline again, and so on). On this thread that code held the actor, its timers and
    // its mailbox for as long as the caller kept I/O going (an outside audit: a mirror over a lost
    // remote leg at QD8 held it ~27 s, until the remote queue's I/O timeout ended the one write
    // that broke the chain). The health is Offline at once; the count is logged when it is done.
    private void GoOffline()
    {
        _health = DeviceHealth.Offline;
        var queue = _queue;
        var failInFlight = (queue.Driver.Features & DriverFeatures.Resettable) != 0;
        var offline = Task.Run(() => queue.SetOffline(failInFlight));
        _offline = offline;
        _offlinePending++;
        // Whether the loss was planned is decided now: a retirement that comes later does not
        // make a failure that took the device offline an expected event.
        var planned = queue.Driver.PlannedLoss;
        offline.PipeTo(Self, success: failed => new WentOffline(failed, null, planned), failure: ex => new WentOffline(0, ex, planned));
    }

    private void LogOffline(WentOffline done)
    {
        if (done.Error is { } error)
        {
            _log.Error(error, "{Device}: the device is offline; failing its requests in flight failed", _queue.Name);
            return;
        }

        if (done.Planned is { } planned)
        {
            // Its owner destroyed or moved the export: expected, so a warning.
            _log.Warning("{Device}: the device is offline ({Reason}); {Failed} request(s) in flight failed, and every pending and later request fails with Offline",
                _queue.Name, planned, done.Failed);
            return;
        }

        _log.Error("{Device}: the device is offline; the queue is dying, {Failed} request(s) in flight failed, and every pending and later request fails with Offline",
            _queue.Name, done.Failed);
    }

    private int NextCpu()
    {
        var online = _queue.Topology.Online;
        var cpu = online.Next(_nextCpu - 1);
        if (cpu < 0)
        {
            cpu = online.First;
        }

        _nextCpu = cpu + 1;
        return cpu;
    }

    private RequestQueueProtocol.Info Info() => new(_queue.Name, _queue.Driver.Kind, _device.Capacity, _device.LogicalBlockSize,
        _queue.HardwareContexts.Count, _queue.SoftwareContexts.Count, _queue.IsStarted ? _queue.Runtime.Mode.ToString().ToLowerInvariant() : "none",
        _queue.TagSet.Name, _queue.IsRegistered, _queue.IsDying, _queue.Usage.Count, _timeouts, _deviceErrors, _resets, _health.ToString().ToLowerInvariant());

    private sealed record ShutdownDone(int Failed);

    private sealed record CancelRecoveryNow
    {
        public static readonly CancelRecoveryNow Instance = new();
    }

    // GoOffline's work on the thread pool is done: how many in-flight requests it failed.
    private sealed record WentOffline(int Failed, Exception? Error, string? Planned);

    // A reopen attempt returned: null when the device is open again, else why not.
    private sealed record ReopenDone(Exception? Error);

    // The supervisor's decider found a non-driver actor past max-resets (HandleDriverBug).
    private sealed record GiveUpForDriverBug
    {
        public static readonly GiveUpForDriverBug Instance = new();
    }

    private sealed record TryReopen
    {
        public static readonly TryReopen Instance = new();
    }

    // The node began to stop (BlockLayer.Stopping was cancelled).
    private sealed record NodeStopping
    {
        public static readonly NodeStopping Instance = new();
    }

    private sealed record DeviceError(int HardwareQueue, Exception Error);

    private sealed record ScanNow(int HardwareQueue);

    // Data-plane events arrive on dispatch threads; they become messages to this actor.
    // A driver's loop that died of a bug (DriverFaultException) is logged here, once, whatever
    // state the device is in when the loss arrives; the loss then takes its usual path.
    private sealed class QueueEvents(IActorRef self, ILoggingAdapter log, string device) : IQueueEvents
    {
        public void OnDeviceError(HardwareContext hctx, Exception error)
        {
            if (error is DriverFaultException { InnerException: { } fault })
            {
                log.Error(fault, "{Device} hctx {Index}: the driver failed internally ({Error}: {Message}); its device is handled as lost",
                    device, hctx.Index, fault.GetType().Name, fault.Message);
            }

            self.Tell(new DeviceError(hctx.Index, error));
        }

        public void OnAbort(HardwareContext hctx) => self.Tell(new ScanNow(hctx.Index));

        // A driver's note for the operator (an NBD server's reason for an error), rate-limited by the driver.
        public void OnDriverWarning(HardwareContext hctx, string message) =>
            log.Warning("{Device} hctx {Index}: {Message}", device, hctx.Index, message);

        // The kernel's "I/O error, dev sda, sector ..." line (blk_print_req_error), rate-limited
        // by the data plane; the count held back comes first, as printk's "callbacks suppressed".
        public void OnRequestError(in RequestError error, int suppressed)
        {
            if (suppressed > 0)
            {
                log.Warning("{Device}: {Count} I/O error messages suppressed", device, suppressed);
            }

            log.Log(LogLevel.ErrorLevel, "{Status} error, dev {Device}, sector {Sector} op {Op} flags {Flags}, {Bytes} bytes, hctx {Index}",
                new object[] { error.Status.Describe(), device, error.Sector, error.Op.Name(), error.Flags, error.Bytes, error.HardwareQueue });
        }
    }
}

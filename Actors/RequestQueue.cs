using ActorBlk.Actors.Serialization;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using Akka.Actor;
using Akka.Event;
using DataPlane = ActorBlk.Hardware.Queues;

namespace ActorBlk.Actors;

/// <summary>
/// Protocol of the request-queue actor (one per disk): it owns the disk's software-context,
/// hardware-queue and driver actors, registers the disk with its tag set and the CPU topology,
/// routes I/O submitted as messages, and tears everything down on unregistration.
/// </summary>
public static class RequestQueue
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
    /// (any when negative); the sender receives <see cref="SoftwareContext.Completed"/> or
    /// <see cref="SoftwareContext.Rejected"/>.
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
        string Dispatch, string TagSet, bool Registered, bool Dying, long InFlight, long Timeouts, long DeviceErrors) : IActorBlkMessage;

    /// <summary>Props of the actor serving <paramref name="device"/>.</summary>
    internal static Props Props(BlockDevice device, IActorRef tagSet, IActorRef topology, BlockLayer layer) =>
        Akka.Actor.Props.Create(() => new RequestQueueActor(device, tagSet, topology, layer));
}

/// <summary>The request-queue actor.</summary>
internal sealed class RequestQueueActor : UntypedActor, IWithUnboundedStash
{
    private readonly BlockDevice _device;
    private readonly DataPlane.RequestQueue _queue;
    private readonly IActorRef _tagSet;
    private readonly IActorRef _topology;
    private readonly BlockLayer _layer;
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private IActorRef[] _contexts = [];
    private IActorRef[] _hardwareQueues = [];
    private IActorRef _driver = ActorRefs.Nobody;
    private bool _joined;
    private bool _registered;
    private int _nextCpu;
    private long _timeouts;
    private long _deviceErrors;
    private IActorRef? _unregisterReplyTo;
    private int _failedAtShutdown;

    public RequestQueueActor(BlockDevice device, IActorRef tagSet, IActorRef topology, BlockLayer layer)
    {
        _device = device;
        _queue = device.Queue;
        _tagSet = tagSet;
        _topology = topology;
        _layer = layer;
    }

    public IStash Stash { get; set; } = null!;

    protected override void PreStart()
    {
        var mailbox = _layer.ModeOf(_queue) == DispatchMode.Mailbox;
        var driver = _driver = Context.ActorOf(DeviceDriver.Props(_queue.Driver, (_queue.Driver.Features & DriverFeatures.Blocking) != 0), "driver");
        _contexts = _queue.SoftwareContexts.Select(ctx => Context.ActorOf(SoftwareContext.Props(ctx, _device), $"ctx-{ctx.Cpu}")).ToArray();
        _hardwareQueues = _queue.HardwareContexts
            .Select(h => Context.ActorOf(HardwareQueue.Props(h, driver, mailbox, _layer.Settings.TimeoutScanInterval), $"hctx-{h.Index}"))
            .ToArray();

        IQueueRuntime runtime = mailbox
            ? new MailboxRuntime(_contexts, _hardwareQueues, _layer.Settings.DrainTimeout)
            : new RingRuntime(_layer.SoftIrq, _layer.Settings.RingSpin);
        _queue.Events = new QueueEvents(Self);
        _queue.Start(runtime);
        _queue.Register();

        _tagSet.Tell(new TagSet.Join(_queue));
        _topology.Tell(new CpuTopology.Register(_queue));
        Become(Initializing);
    }

    protected override void OnReceive(object message) => Unhandled(message);

    // ------------------------------------------------------------------ behaviours

    private void Initializing(object message)
    {
        switch (message)
        {
            case TagSet.Joined:
                _joined = true;
                break;
            case CpuTopology.Registered:
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
            Context.Parent.Tell(new RequestQueue.Ready(_queue.Name));
            Stash.UnstashAll();
            Become(Active);
        }
    }

    private void Active(object message)
    {
        switch (message)
        {
            case RequestQueue.Io io:
                var cpu = io.Cpu >= 0 && io.Cpu < _contexts.Length ? io.Cpu : NextCpu();
                _contexts[cpu].Forward(new SoftwareContext.Submit(io.Id, io.Op, io.Offset, io.Length, io.Data, io.Flags));
                break;
            case RequestQueue.GetInfo:
                Sender.Tell(Info());
                break;
            case HardwareQueue.TimeoutsExpired t:
                _timeouts += t.Expired;
                break;
            case HardwareQueue.DeviceFaulted f:
                HandleDeviceError(f.HardwareQueue, f.Error);
                break;
            case DeviceError e:
                HandleDeviceError(e.HardwareQueue, e.Error);
                break;
            case RequestQueue.Unregister:
                _unregisterReplyTo = Sender;
                _log.Info("Unregistering {Device}", _queue.Name);
                _topology.Tell(new CpuTopology.Unregister(_queue));
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
            case CpuTopology.Unregistered:
                _queue.ShutdownAsync(_layer.Settings.DrainTimeout).PipeTo(Self, success: failed => new ShutdownDone(failed));
                break;
            case ShutdownDone done:
                // The driver actor runs exit_hctx when it stops (mailbox dispatch): it must be
                // gone before the driver is disposed, as the kernel exits hardware contexts
                // before the driver frees itself.
                _failedAtShutdown = done.Failed;
                Context.Watch(_driver);
                Context.Stop(_driver);
                break;
            case Terminated t when t.ActorRef.Equals(_driver):
                _tagSet.Tell(new TagSet.Leave(_queue));
                break;
            case TagSet.Left:
                _queue.Driver.Dispose();
                if (_failedAtShutdown > 0)
                {
                    _log.Warning("Unregistered {Device}: {Failed} request(s) did not drain within {Timeout} and were failed with Offline",
                        _queue.Name, _failedAtShutdown, _layer.Settings.DrainTimeout);
                }
                else
                {
                    _log.Info("Unregistered {Device}: every request completed", _queue.Name);
                }

                var reply = new RequestQueue.Unregistered(_queue.Name, _failedAtShutdown);
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
            case RequestQueue.Io io:
                Sender.Tell(new SoftwareContext.Rejected(io.Id, InvalidRequestReason.NotSupported, $"{_queue.Name}: the device is being removed."));
                break;
            case RequestQueue.GetInfo:
                Sender.Tell(Info());
                break;
            case HardwareQueue.TimeoutsExpired t:
                _timeouts += t.Expired;
                break;
            default:
                Unhandled(message);
                break;
        }
    }

    // ------------------------------------------------------------------ helpers

    private void HandleDeviceError(int hctx, Exception error)
    {
        _deviceErrors++;
        _log.Error(error, "{Device} hctx {Index}: device error; the hardware queue is stopped", _queue.Name, hctx);
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

    private RequestQueue.Info Info() => new(_queue.Name, _queue.Driver.Kind, _device.Capacity, _device.LogicalBlockSize,
        _queue.HardwareContexts.Count, _queue.SoftwareContexts.Count, _queue.IsStarted ? _queue.Runtime.Mode.ToString().ToLowerInvariant() : "none",
        _queue.TagSet.Name, _queue.IsRegistered, _queue.IsDying, _queue.Usage.Count, _timeouts, _deviceErrors);

    private sealed record ShutdownDone(int Failed);

    private sealed record DeviceError(int HardwareQueue, Exception Error);

    // Data-plane events arrive on dispatch threads; they become messages to this actor.
    private sealed class QueueEvents(IActorRef self) : IQueueEvents
    {
        public void OnDeviceError(HardwareContext hctx, Exception error) => self.Tell(new DeviceError(hctx.Index, error));
    }
}

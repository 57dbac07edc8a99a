using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using Akka.Actor;
using Akka.Event;

namespace ActorBlk.Actors;

/// <summary>
/// Protocol of the device-driver actor: it owns the <see cref="IBlockDriver"/> and, in mailbox
/// dispatch, is where QueueRq runs. Its supervisor decides what a device error means.
/// </summary>
public static class DeviceDriver
{
    /// <summary>Hand a dispatch batch to the driver; the sender gets <see cref="HardwareQueue.Dispatched"/>. Local only.</summary>
    public sealed record QueueRqs(HardwareContext Hctx, Request[] Batch) : INoSerializationVerificationNeeded;

    /// <summary>Props of the actor owning <paramref name="driver"/>.</summary>
    /// <param name="driver">The driver.</param>
    /// <param name="blocking">The driver's QueueRq may block: give the actor its own thread.</param>
    public static Props Props(IBlockDriver driver, bool blocking)
    {
        var props = Akka.Actor.Props.Create(() => new DeviceDriverActor(driver));
        return blocking ? props.WithDispatcher(ActorBlkSettings.BlockingDriverDispatcher) : props;
    }
}

/// <summary>The device-driver actor.</summary>
internal sealed class DeviceDriverActor : UntypedActor
{
    private readonly IBlockDriver _driver;
    private readonly HashSet<HardwareContext> _initialised = [];
    private readonly ILoggingAdapter _log = Context.GetLogger();

    public DeviceDriverActor(IBlockDriver driver) => _driver = driver;

    protected override void OnReceive(object message)
    {
        switch (message)
        {
            case DeviceDriver.QueueRqs q:
                HandleQueueRqs(q);
                break;
            default:
                Unhandled(message);
                break;
        }
    }

    protected override void PostStop()
    {
        foreach (var hctx in _initialised)
        {
            try
            {
                _driver.ExitHardwareContext(hctx);
            }
            catch (Exception ex)
            {
                _log.Warning(ex, "{Driver} driver: exit of hctx {Index} failed", _driver.Kind, hctx.Index);
            }
        }
    }

    // The driver runs as if on the hardware queue's CPU, so inline completions are routed as they
    // would be from that CPU's interrupt.
    private void HandleQueueRqs(DeviceDriver.QueueRqs q)
    {
        if (_initialised.Add(q.Hctx))
        {
            _driver.InitHardwareContext(q.Hctx);
        }

        DispatchOutcome outcome;
        using (CurrentCpu.Bind(q.Hctx.HomeCpu))
        {
            outcome = q.Hctx.Issue(_driver, q.Batch);
        }

        Sender.Tell(new HardwareQueue.Dispatched(q.Batch, outcome));
    }
}

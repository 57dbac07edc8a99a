using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Drivers;

/// <summary>What a driver's timeout handler asks the block layer to do (<c>enum blk_eh_timer_return</c>).</summary>
public enum TimeoutAction
{
    /// <summary>The driver completed the request, or will: the block layer does nothing more (<c>BLK_EH_DONE</c>).</summary>
    Done,

    /// <summary>Give the request another full timeout (<c>BLK_EH_RESET_TIMER</c>).</summary>
    ResetTimer,
}

/// <summary>Optional capabilities of a driver.</summary>
[Flags]
public enum DriverFeatures
{
    /// <summary>Nothing optional.</summary>
    None = 0,

    /// <summary>The driver implements <see cref="IBlockDriver.Poll"/> and has poll queues.</summary>
    Poll = 1 << 0,

    /// <summary>QueueRq may block (<c>BLK_MQ_F_BLOCKING</c>); mailbox mode gives the driver its own thread.</summary>
    Blocking = 1 << 1,

    /// <summary>
    /// The driver can be reset after a device error (<see cref="IBlockDriver.Reset"/>) and then
    /// abandons the requests it held, so the block layer may take them back and retry them.
    /// </summary>
    Resettable = 1 << 2,

    /// <summary>A device that is gone can be opened again (<see cref="IBlockDriver.Reopen"/>), with back-off.</summary>
    Reopenable = 1 << 3,

    /// <summary>
    /// <see cref="IBlockDriver.InitHardwareContext"/> may run on any thread and more than once: the
    /// queue calls it for every hardware queue as it starts, as Linux's <c>init_hctx</c> runs at
    /// queue creation, so work that must go on while a queue is idle starts at once (an NBD
    /// connection's receiver, which sees the server close it). The dispatcher still calls it
    /// before its first <c>QueueRq</c>.
    /// </summary>
    EagerHardwareContexts = 1 << 4,
}

/// <summary>
/// A block device driver (<c>struct blk_mq_ops</c>): the block layer hands it requests, it moves
/// the data and completes them.
/// </summary>
/// <remarks>
/// <para>
/// Contract of <see cref="QueueRq"/> (blk-mq-semantics §3.5): call <see cref="Request.Start"/>
/// before touching the device, then return <see cref="BlockStatus.Ok"/> (accepted; complete it
/// later with <see cref="Request.Complete(BlockStatus, uint)"/>, naming the
/// <see cref="Request.Generation"/> read after <c>Start</c>, so that a late or second completion
/// cannot end the tag's next request; <see cref="Request.Complete(BlockStatus)"/> and
/// <see cref="Request.End"/> complete whatever is in flight on the tag when they run),
/// <see cref="BlockStatus.Resource"/> (a system-wide shortage: the request goes back to the head
/// of the hardware queue and the queue is rerun after 3 ms), <see cref="BlockStatus.DeviceResource"/>
/// (a device shortage that in-flight I/O will free: rerun on the next completion), or any other
/// status, which ends the request with that status. <c>last</c> is true for the final request of a
/// dispatch batch; when a batch stops early after at least one request was accepted the block
/// layer calls <see cref="CommitRqs"/>, so a driver that defers its doorbell until <c>last</c>
/// still rings it. A request accepted without <see cref="Request.Start"/> is started by the block
/// layer as <c>QueueRq</c> returns (<see cref="HardwareContext.UnstartedAccepted"/>), so its
/// timeout and a removal still reach it; a completion sent before then is refused.
/// </para>
/// <para>
/// Threading: all calls for one hardware queue come from one dispatcher at a time (its dispatch
/// loop thread in ring mode, its driver actor in mailbox mode), and <see cref="InitHardwareContext"/>
/// runs on that dispatcher before the first <c>QueueRq</c>. <see cref="Timeout"/> runs on the
/// hardware queue's control actor, concurrently with dispatch, but never while the <c>QueueRq</c>
/// that started its request is still running (the scan waits for the rounds in progress first,
/// as the kernel's timeout work waits for a quiesce grace period); <see cref="Poll"/> runs on the
/// polling caller. Throwing <see cref="BlockDeviceErrorException"/> from <c>QueueRq</c> reports a
/// device error to the driver's supervisor; any other exception from <c>QueueRq</c>,
/// <see cref="CommitRqs"/> or <see cref="InitHardwareContext"/> is reported the same way (a
/// transient error: the device is reset, and <c>InitHardwareContext</c> runs again before the
/// next <c>QueueRq</c>), and so is one from <see cref="Poll"/>, once per hardware queue until the
/// reset or reopen it causes has ended; the polling caller never sees it, and the queue goes on
/// polling the driver. An exception from <see cref="ExitHardwareContext"/> is ignored.
/// </para>
/// </remarks>
public interface IBlockDriver : IDisposable
{
    /// <summary>The driver's kind, for logs and attributes ("null", "file", "faulty").</summary>
    string Kind { get; }

    /// <summary>One line describing the device for the start-up log (backing store, engine); the kind by default.</summary>
    string Description => Kind;

    /// <summary>
    /// True when the device behind the driver refuses writes whatever the queue says: an NBD
    /// server that exports it read-only, a file opened read-only. The queue is then read-only from
    /// its creation and cannot be made writable (<c>set_disk_ro</c> by the driver, which
    /// <c>BLKROSET</c> cannot undo). False by default.
    /// </summary>
    bool ReadOnly => false;

    /// <summary>Geometry, capacity and capabilities of the device.</summary>
    QueueLimits Limits { get; }

    /// <summary>Optional capabilities.</summary>
    DriverFeatures Features { get; }

    /// <summary>Bytes of per-request payload the driver wants (<c>cmd_size</c>).</summary>
    int PayloadSize => 0;

    /// <summary>A buffer from memory the driver registered with its hardware (fixed buffers), or null when it has none or none is left.</summary>
    AlignedBuffer? AllocateBuffer(int length) => null;

    /// <summary>Initialises one preallocated request (<c>init_request</c>), once per request of each hardware queue.</summary>
    void InitRequest(Request request, int hardwareQueue)
    {
    }

    /// <summary>Sets up per-hardware-queue state (<c>init_hctx</c>), on that queue's dispatcher.</summary>
    void InitHardwareContext(HardwareContext hctx)
    {
    }

    /// <summary>Releases per-hardware-queue state (<c>exit_hctx</c>), on that queue's dispatcher.</summary>
    void ExitHardwareContext(HardwareContext hctx)
    {
    }

    /// <summary>Queues one request to the device (<c>queue_rq</c>).</summary>
    BlockStatus QueueRq(HardwareContext hctx, Request request, bool last);

    /// <summary>No more requests are coming in this batch (<c>commit_rqs</c>).</summary>
    void CommitRqs(HardwareContext hctx)
    {
    }

    /// <summary>Reaps completions of a poll queue in the caller (<c>poll</c>); returns how many it found.</summary>
    int Poll(HardwareContext hctx) => 0;

    /// <summary>A request's deadline passed (<c>timeout</c>). The default re-arms the timer, as the kernel does without a handler.</summary>
    TimeoutAction Timeout(Request request) => TimeoutAction.ResetTimer;

    /// <summary>
    /// Resets the device after an error (a controller reset). Called with dispatch stopped; requests
    /// that were in flight are retried or failed by the block layer afterwards.
    /// </summary>
    void Reset()
    {
    }

    /// <summary>
    /// Opens a device that was gone again (a reconnect). Throws while it is still gone; the
    /// supervisor retries with back-off, then gives the device up.
    /// </summary>
    /// <exception cref="BlockDeviceErrorException">The device is still gone.</exception>
    void Reopen() => throw new NotSupportedException($"The {Kind} driver cannot reopen a device.");

    /// <summary>
    /// The device is being removed: a <see cref="Reset"/> or <see cref="Reopen"/> in progress, and
    /// any later one, gives up at once by throwing <see cref="BlockDeviceErrorException"/> with
    /// <see cref="BlockDeviceErrorException.DeviceGone"/> set, rather than holding the removal for
    /// as long as it would take (a reconnect's connect timeout). The block layer then takes the
    /// device as lost and fails every request still in flight with <see cref="BlockStatus.Offline"/>
    /// (a write among them has an unknown outcome). It calls this at once for a device being
    /// reopened, and otherwise a second after the removal began (a reset that reconnects by then
    /// lets the requests waiting for it run, and they drain) or when the drain ends. May be called more
    /// than once, from any thread, concurrently with the other calls; the default does nothing (a
    /// driver whose reset and reopen cannot block need not implement it).
    /// </summary>
    void CancelRecovery()
    {
    }

    /// <summary>
    /// The block layer is about to end every request the driver still holds without its answer,
    /// with <see cref="BlockStatus.Offline"/>: the queue's teardown ran past its drain timeout, or
    /// the device went offline with its requests in flight. Their bios and buffers go back to their
    /// callers, so after this returns the driver must not touch them; it may still receive their
    /// answers and must drop them. The kernel needs no such call (<c>blk_mq_destroy_queue</c> waits
    /// for every request); a teardown here is bounded, unless a driver that cannot take its
    /// requests back waits here until they are answered, as the file device does for the I/O the
    /// kernel holds (the removal then outlasts its timeout, as on Linux). May be called more than once, from any
    /// thread, concurrently with the other calls; a throw is ignored. The default does nothing (a
    /// driver whose requests are answered synchronously, or whose engine the runtime's detach
    /// drained, needs nothing).
    /// </summary>
    void Abandon()
    {
    }

    /// <summary>
    /// Why the device was given up on purpose, or null: its owner destroyed or moved the export a
    /// client driver serves (<see cref="Nbd.NbdClientDriver.Retire(string, bool)"/>). The loss
    /// that follows is then an expected event, and the block layer logs it as a warning rather
    /// than an error; it fails the requests with <see cref="BlockStatus.Offline"/> all the same.
    /// The default is null.
    /// </summary>
    string? PlannedLoss => null;
}

/// <summary>
/// Thrown by a driver to report that the device failed. A transient error restarts (resets) the
/// device; a device that is gone stops it and fails every request with <see cref="BlockStatus.Offline"/>.
/// </summary>
public class BlockDeviceErrorException : Exception
{
    /// <summary>Creates the exception.</summary>
    public BlockDeviceErrorException(string message, bool deviceGone = false, Exception? inner = null)
        : base(message, inner)
    {
        DeviceGone = deviceGone;
    }

    /// <summary>True when the device is gone for good rather than in a transient error.</summary>
    public bool DeviceGone { get; }
}

/// <summary>
/// A driver's background loop (an NBD connection's receiver or send pump) ended on an exception it
/// does not expect, a bug rather than a device's or a peer's failure: the device is handled as
/// gone (<see cref="BlockDeviceErrorException.DeviceGone"/>), so the usual loss path runs, and the
/// block layer logs <see cref="Exception.InnerException"/> (the exception itself, with its type and
/// stack) once at error level when the loss is reported.
/// </summary>
internal sealed class DriverFaultException(string message, Exception fault) : BlockDeviceErrorException(message, deviceGone: true, fault);

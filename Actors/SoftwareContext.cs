using ActorBlk.Actors.Serialization;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using Akka.Actor;
using Akka.Event;

namespace ActorBlk.Actors;

/// <summary>
/// Protocol of the software-context actor: one per possible CPU of a request queue. In mailbox
/// dispatch it runs the submission path of its CPU (merge, tag, stage) and the completions
/// redirected to its CPU; in both modes it serves statistics and I/O submitted as messages.
/// </summary>
public static class SoftwareContextProtocol
{
    /// <summary>
    /// Run the submission path for a bio on this context. Local only. (Mailbox dispatch publishes a
    /// bio to the context's inbox, or, when that is full, sends the <see cref="Bio"/> itself, which
    /// the actor takes as the same command.)
    /// </summary>
    public sealed record SubmitBio(Bio Bio) : INoSerializationVerificationNeeded;

    /// <summary>
    /// Run the completion of a request redirected to this context's CPU (rq_affinity). Local only.
    /// (Mailbox dispatch publishes it to the context's inbox, or, when that is full, sends the
    /// <see cref="Request"/> itself, which the actor takes as the same command.)
    /// </summary>
    public sealed record CompleteRequest(Request Request) : INoSerializationVerificationNeeded;

    /// <summary>
    /// An I/O submitted as a message, locally or over the cluster. The sender receives
    /// <see cref="Completed"/> or <see cref="Rejected"/> with the same <paramref name="Id"/>; from
    /// another node, a read or write past the node's budget of remote I/O in flight
    /// (<c>actorblk.remote.max-inflight-io-bytes</c>) is <see cref="Completed"/> at once with
    /// <see cref="BlockStatus.Resource"/>.
    /// </summary>
    /// <param name="Id">The caller's identifier, echoed in the reply.</param>
    /// <param name="Op">The operation.</param>
    /// <param name="Offset">Byte offset.</param>
    /// <param name="Length">Byte length (the data's length for writes; 0 for flush).</param>
    /// <param name="Data">The data of a write.</param>
    /// <param name="Flags">Request flags (FUA, no-wait...).</param>
    public sealed record Submit(long Id, BlockOp Op, long Offset, int Length, byte[]? Data = null, RequestFlags Flags = RequestFlags.None) : IActorBlkMessage;

    /// <summary>The I/O completed; <paramref name="Data"/> holds what a successful read returned.</summary>
    public sealed record Completed(long Id, BlockStatus Status, byte[]? Data) : IActorBlkMessage;

    /// <summary>The I/O was malformed and nothing was submitted.</summary>
    public sealed record Rejected(long Id, InvalidRequestReason Reason, string Message) : IActorBlkMessage;

    /// <summary>Asks for the context's counters.</summary>
    public sealed record GetStats : IActorBlkQuery
    {
        /// <summary>The instance.</summary>
        public static readonly GetStats Instance = new();
    }

    /// <summary>The context's counters (<c>dispatched</c>, <c>merged</c>, <c>completed</c>).</summary>
    public sealed record Stats(int Cpu, long DispatchedSync, long DispatchedAsync, long Merged, long CompletedSync, long CompletedAsync) : IActorBlkMessage;

    /// <summary>Props of the actor for <paramref name="ctx"/> of <paramref name="device"/>.</summary>
    public static Props Props(SoftwareContext ctx, BlockDevice device) =>
        Akka.Actor.Props.Create(() => new SoftwareContextActor(ctx, device));
}

/// <summary>The software-context actor. Runs every message bound to its CPU.</summary>
/// <remarks>
/// On a per-CPU mailbox thread it is a work source of that thread: while requests submitted
/// through its context are outstanding, their completions (redirected here) or the next bios of
/// their submitters are expected soon, and the idle thread spins instead of parking
/// (<see cref="MailboxIdleSpin"/>).
/// </remarks>
internal sealed class SoftwareContextActor : UntypedActor, IMailboxWorkSource
{
    private readonly SoftwareContext _ctx;
    private readonly BlockDevice _device;
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly int _maxRemoteData = RemoteSurface.MaxRemoteData(Context.System.Settings.Config);
    private readonly RemoteIoBudget _remoteBudget = RemoteIoBudget.For(Context.System);

    public SoftwareContextActor(SoftwareContext ctx, BlockDevice device)
    {
        _ctx = ctx;
        _device = device;
    }

    /// <summary>Requests dispatched from this context (allocated) and not yet completed.</summary>
    bool IMailboxWorkSource.ExpectsWork =>
        _ctx.DispatchedSync + _ctx.DispatchedAsync != _ctx.CompletedSync + _ctx.CompletedAsync;

    protected override void PreStart()
    {
        base.PreStart();
        (Context.Dispatcher as MailboxDispatcher)?.Watch(this);
    }

    protected override void OnReceive(object message)
    {
        using var bind = CurrentCpu.Bind(_ctx.Cpu);
        switch (message)
        {
            // Mailbox dispatch publishes bios and redirected requests to the context's inbox and
            // sends one DrainInbox for all of them (MailboxRuntime.Post).
            case MailboxRuntime.DrainInbox:
                if (_ctx.Queue.Runtime is MailboxRuntime runtime)
                {
                    runtime.Drain(_ctx);
                }

                break;

            // When the inbox is full, mailbox dispatch sends the bio and the redirected request
            // themselves, with no wrapper to allocate; the records are the same commands for other senders.
            case Bio bio:
                _ctx.Queue.SubmitBio(bio);
                break;
            case Request request:
                _ctx.Queue.EndRequest(request);
                break;
            case SoftwareContextProtocol.SubmitBio submit:
                _ctx.Queue.SubmitBio(submit.Bio);
                break;
            case SoftwareContextProtocol.CompleteRequest complete:
                _ctx.Queue.EndRequest(complete.Request);
                break;
            case SoftwareContextProtocol.Submit io:
                HandleSubmit(io);
                break;
            case SoftwareContextProtocol.GetStats:
                Sender.Tell(new SoftwareContextProtocol.Stats(_ctx.Cpu, _ctx.DispatchedSync, _ctx.DispatchedAsync, _ctx.Merged, _ctx.CompletedSync, _ctx.CompletedAsync));
                break;
            default:
                Unhandled(message);
                break;
        }
    }

    // A bio or request still in the inbox when the actor stops (teardown, or a restart) is run
    // now: on a torn-down queue it fails with Offline instead of waiting where nobody looks.
    protected override void PostStop()
    {
        (Context.Dispatcher as MailboxDispatcher)?.Unwatch(this);
        if (_ctx.Queue.IsStarted && _ctx.Queue.Runtime is MailboxRuntime runtime)
        {
            using var bind = CurrentCpu.Bind(_ctx.Cpu);
            runtime.DrainOnStop(_ctx);
        }

        base.PostStop();
    }

    private void HandleSubmit(SoftwareContextProtocol.Submit io) => MessageIo.Submit(_device, io, _ctx.Cpu, Sender, _log, _maxRemoteData, _remoteBudget);
}

/// <summary>An I/O that arrived as a message (from a peer node or an actor), submitted to a device with its reply as the end-io.</summary>
internal static class MessageIo
{
    /// <summary>
    /// Submits <paramref name="io"/> to <paramref name="device"/> on <paramref name="cpu"/>; the
    /// sender receives <see cref="SoftwareContextProtocol.Completed"/> (with the data of a read) or, for a
    /// malformed I/O, <see cref="SoftwareContextProtocol.Rejected"/> at once. Every field is checked before
    /// anything is allocated (<see cref="Check"/>); a sender on another node may move at most
    /// <paramref name="maxRemoteData"/> bytes per message (the remoting frame, less the envelope),
    /// and its reads and writes together at most the <paramref name="remoteBudget"/> until they
    /// complete: one that does not fit is answered at once, without allocating, with
    /// <see cref="BlockStatus.Resource"/> (ENOMEM; the caller retries).
    /// </summary>
    public static void Submit(IBlockDevice device, SoftwareContextProtocol.Submit io, int cpu, IActorRef sender, ILoggingAdapter log, int maxRemoteData = int.MaxValue,
        RemoteIoBudget? remoteBudget = null)
    {
        if (Check(device, io, sender, maxRemoteData) is { } refusal)
        {
            if (log.IsDebugEnabled)
            {
                log.Debug("Rejected I/O {Id} from {Sender}: {Reason}", io.Id, sender, refusal.Message);
            }

            sender.Tell(refusal);
            return;
        }

        // The data a remote read or write holds until it completes (Check has bounded Length).
        var held = remoteBudget is not null && (io.Op is BlockOp.Read or BlockOp.Write) && IsRemote(sender) ? io.Length : 0;
        if (held > 0 && !remoteBudget!.TryTake(held))
        {
            // A peer may retry for ever: one warning line for the first refusals, then one in a thousand.
            var refused = remoteBudget.CountRefusal();
            if (refused <= 10 || refused % 1000 == 0)
            {
                log.Warning("Refused I/O {0} from {1} with Resource: remote I/O in flight holds {2} of {3} bytes ({4}); {5} refused so far",
                    io.Id, sender, remoteBudget.InUse, remoteBudget.Capacity, RemoteSurface.MaxInflightIoBytesKey, refused);
            }

            sender.Tell(new SoftwareContextProtocol.Completed(io.Id, BlockStatus.Resource, null));
            return;
        }

        var buffer = io.Op switch
        {
            BlockOp.Read => new byte[io.Length],
            BlockOp.Write => io.Data ?? [],
            _ => [],
        };

        var length = io.Op == BlockOp.Write ? buffer.Length : io.Length;
        var reply = new Reply(sender, io.Id, io.Op == BlockOp.Read ? buffer : null, held > 0 ? remoteBudget : null, held);

        try
        {
            device.SubmitWithEndIo(io.Op, io.Offset, length, buffer, io.Flags, cpu, reply);
        }
        catch (InvalidBlockRequestException ex)
        {
            reply.Release();
            if (log.IsDebugEnabled)
            {
                log.Debug("Rejected I/O {Id} from {Sender}: {Reason}", io.Id, sender, ex.Message);
            }

            sender.Tell(new SoftwareContextProtocol.Rejected(io.Id, ex.Reason, ex.Message));
        }
        catch
        {
            // Escaping, it restarts the actor; the bytes must not stay taken for ever.
            reply.Release();
            throw;
        }
    }

    /// <summary>
    /// The refusal of <paramref name="io"/> before anything is allocated or submitted, or null: a
    /// defined operation, a length of 0 or more within the device's <c>max_sectors_kb</c> (reads
    /// and writes; discards and write-zeroes move no data but stay within the capacity), data only
    /// on writes and exactly as long as named, and for a sender on another node a read or write
    /// that fits in one remoting frame (larger transfers go over NBD); so must one with no sender
    /// (a peer that names none), whose reply nobody receives.
    /// </summary>
    public static SoftwareContextProtocol.Rejected? Check(IBlockDevice device, SoftwareContextProtocol.Submit io, IActorRef sender, int maxRemoteData)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(io);
        if (!Enum.IsDefined(io.Op))
        {
            return new SoftwareContextProtocol.Rejected(io.Id, InvalidRequestReason.NotSupported, $"{device.Name}: operation {(int)io.Op} is not defined.");
        }

        if (io.Length < 0 || io.Offset < 0)
        {
            return new SoftwareContextProtocol.Rejected(io.Id, InvalidRequestReason.OutOfRange, $"{device.Name}: offset {io.Offset} and length {io.Length} must not be negative.");
        }

        var movesData = io.Op is BlockOp.Read or BlockOp.Write;
        if (io.Data is not null && io.Op != BlockOp.Write)
        {
            return new SoftwareContextProtocol.Rejected(io.Id, InvalidRequestReason.OutOfRange, $"{device.Name}: only a write carries data.");
        }

        if (io.Op == BlockOp.Write && (io.Data?.Length ?? 0) != io.Length)
        {
            return new SoftwareContextProtocol.Rejected(io.Id, InvalidRequestReason.OutOfRange, $"{device.Name}: the write carries {io.Data?.Length ?? 0} bytes but names {io.Length}.");
        }

        if (io.Length > device.Capacity || io.Offset > device.Capacity - io.Length)
        {
            return new SoftwareContextProtocol.Rejected(io.Id, InvalidRequestReason.OutOfRange, $"{device.Name}: {io.Length} bytes at offset {io.Offset} lie beyond the capacity ({device.Capacity} bytes).");
        }

        var maxBytes = (long)device.Queue.Limits.MaxSectors * 512;
        if (movesData && io.Length > maxBytes)
        {
            return new SoftwareContextProtocol.Rejected(io.Id, InvalidRequestReason.OutOfRange, $"{device.Name}: {io.Length} bytes exceed max_sectors_kb ({maxBytes / 1024}); split the I/O.");
        }

        // A message from another node that names no sender arrives with dead letters as its
        // sender, a local reference: it is held to the same limit (an outside audit sent 2,000
        // reads of 1,280 KiB, 300 KB in all, without a sender, and the node grew by 2.5 GB). A
        // reply to nobody carries nothing anyone reads.
        if (movesData && io.Length > maxRemoteData && IsRemote(sender))
        {
            return new SoftwareContextProtocol.Rejected(io.Id, InvalidRequestReason.OutOfRange,
                $"{device.Name}: {io.Length} bytes do not fit in one remoting message (at most {maxRemoteData}); move large transfers over NBD.");
        }

        return null;
    }

    // A sender on another node, or none (a peer that names none arrives with dead letters, a local reference).
    private static bool IsRemote(IActorRef sender) => sender is IActorRefScope { IsLocal: false } || sender.IsNobody();

    // Replies to the submitter when the bio completes; read data travels back in the reply. The
    // budget is given back before the reply goes, so a caller that sends its next request on the
    // reply finds the room free; at most once (a submission that throws gives it back itself).
    private sealed class Reply(IActorRef replyTo, long id, byte[]? readBuffer, RemoteIoBudget? budget, long held) : IBioEndIo
    {
        private long _held = held;

        public void OnBioComplete(Bio bio, BlockStatus status)
        {
            Release();
            replyTo.Tell(new SoftwareContextProtocol.Completed(id, status, status == BlockStatus.Ok ? readBuffer : null));
        }

        public void Release()
        {
            if (Interlocked.Exchange(ref _held, 0) is var bytes and > 0)
            {
                budget!.Return(bytes);
            }
        }
    }
}

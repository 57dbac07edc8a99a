using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Rings;
using ActorBlk.Hardware.Topology;
using Akka.Actor;
using Akka.Event;

namespace ActorBlk.Actors;

/// <summary>
/// Mailbox dispatch (<see cref="DispatchMode.Mailbox"/>): I/O arrives as messages. A bio goes to
/// its software-context actor, which builds the request and stages it in the hardware queue's
/// ring; the first request staged on an idle queue sends one <see cref="HardwareQueue.Run"/> to
/// that queue's driver actor, which takes, issues and finishes whole batches in its own mailbox
/// turn. A redirected completion goes to the software-context actor of the submitting CPU.
/// </summary>
/// <remarks>
/// <para>
/// A bio (or a redirected request) from a thread other than its context's own is published to
/// the context's inbox, a lock-free MPSC ring, and only the first item published since the
/// context actor's last turn sends a message (<see cref="DrainInbox"/>, a shared instance). The
/// actor takes everything published meanwhile in one turn, so a burst of N submissions costs one
/// Akka envelope and at most one wake-up of the CPU's thread, and its requests reach the driver
/// actor as one batch behind one <see cref="HardwareQueue.Run"/>. When the inbox is full the item
/// travels as a message of its own, as every bio did before.
/// </para>
/// <para>
/// Each hardware queue has one dispatcher at a time: its driver actor, or, while no driver actor
/// lives (the device is gone), its hardware-queue actor, which fails what is staged once the
/// device is offline and otherwise lets it wait for the reopened device's driver actor.
/// </para>
/// </remarks>
internal sealed class MailboxRuntime : IQueueRuntime
{
    // Depth of submissions run inline on this thread (see Submit): one level at most, so a bio that
    // completes within its submission and whose end-io submits again goes through the mailbox.
    [ThreadStatic]
    private static int t_inline;

    private readonly IActorRef[] _contexts;
    private readonly Inbox[] _inboxes;
    private readonly MailboxDispatcher?[] _threads;
    private readonly Slot[] _slots;
    private readonly TimeSpan _askTimeout;

    /// <summary>Creates the runtime.</summary>
    /// <param name="contexts">The software-context actors, by CPU.</param>
    /// <param name="dispatchers">The first dispatcher of each hardware queue, by index (its driver actor).</param>
    /// <param name="askTimeout">How long a quiesce waits for a dispatcher to answer.</param>
    /// <param name="threads">
    /// The per-CPU thread each software-context actor runs on, by CPU (null entries, or null, on
    /// Akka's default dispatcher): a bio submitted on its context's own thread is run there at once.
    /// </param>
    public MailboxRuntime(IActorRef[] contexts, IActorRef[] dispatchers, TimeSpan askTimeout, MailboxDispatcher?[]? threads = null)
    {
        _contexts = contexts;
        _threads = threads ?? new MailboxDispatcher?[contexts.Length];
        _slots = dispatchers.Select(d => new Slot(d)).ToArray();
        _inboxes = contexts.Select(_ => new Inbox()).ToArray();
        _askTimeout = askTimeout;
    }

    public DispatchMode Mode => DispatchMode.Mailbox;

    public void Attach(RequestQueue queue)
    {
    }

    // A bio submitted on the thread that runs its context actor (an end-io on that CPU submitting
    // the next I/O from a driver actor's turn) runs the submission path at once: that thread would
    // run the message next anyway, so the context stays served by one thread at a time and the
    // message is saved. Any other submitter publishes the bio to the context's inbox (Post).
    public void Submit(SoftwareContext ctx, Bio bio)
    {
        var cpu = ctx.Cpu;
        var thread = _threads[cpu];
        if (thread is null || t_inline != 0 || !thread.IsCurrentThread)
        {
            Post(cpu, bio);
            return;
        }

        t_inline = 1;
        thread.InlineSubmissions++;
        try
        {
            using var bind = CurrentCpu.Bind(cpu);
            ctx.Queue.SubmitBio(bio);
        }
        finally
        {
            t_inline = 0;
        }
    }

    public void ResumeBio(Bio bio) => Post(bio.Cpu, bio);

    // Staging is a publish to the hardware queue's ring (any thread may); only the first request
    // staged since the dispatcher's last turn costs a message.
    public void Stage(HardwareContext hctx, Request request)
    {
        hctx.Stage(request);
        Kick(hctx);
    }

    public void StageBatch(HardwareContext hctx, ReadOnlySpan<Request> requests)
    {
        foreach (var rq in requests)
        {
            hctx.Stage(rq);
        }

        Kick(hctx);
    }

    public void Kick(HardwareContext hctx)
    {
        var slot = _slots[hctx.Index];
        if (Interlocked.Exchange(ref slot.Scheduled, 1) == 0)
        {
            Volatile.Read(ref slot.Dispatcher).Tell(HardwareQueue.Run.Instance, ActorRefs.NoSender);
        }
    }

    public void DeliverCompletion(SoftwareContext target, Request request) => Post(target.Cpu, request);

    // Each CPU's actors run on that CPU's mailbox thread, so in mailbox dispatch a CPU is a thread:
    // a completion on any other thread (a timer's, an io_uring reaper's, an application's) is handed
    // to the submitting CPU's inbox, as an interrupt on another CPU raises the block softirq there.
    // Its end-io then runs on the mailbox thread, and a next bio it submits takes the inline path
    // (Submit) instead of crossing back through the inbox. A completion on a mailbox thread (a
    // driver actor's inline completion) runs in place when rq_affinity lets it. Without per-CPU
    // threads (Akka's default dispatcher) no thread belongs to a CPU and nothing changes.
    public bool CompletesInPlace(SoftwareContext target) =>
        _threads[target.Cpu] is null || MailboxDispatcher.IsAnyCurrentThread;

    // A dispatcher runs a round within one message, so the answer to this one means no round is
    // in progress. A dispatcher that dies meanwhile (a driver actor stopped by supervision, to be
    // reopened) never answers, and runs no round either: its death ends the wait, or the wait
    // moves on to the successor set in its place. Before, the ask waited the drain timeout and
    // failed, and the quiesce it served (an nr_requests write) was left raised for good: the
    // queue never dispatched again (an outside audit).
    public Task WaitDispatchIdleAsync(HardwareContext hctx) => WaitSlotIdleAsync(hctx.Index, _askTimeout);

    private async Task WaitSlotIdleAsync(int index, TimeSpan timeout)
    {
        var slot = _slots[index];
        while (true)
        {
            var dispatcher = Volatile.Read(ref slot.Dispatcher);
            using var watching = new CancellationTokenSource();
            var idle = dispatcher.Ask<HardwareQueue.DispatchIdle>(HardwareQueue.WaitIdle.Instance, timeout);
            var died = dispatcher.WatchAsync(watching.Token);
            if (await Task.WhenAny(idle, died).ConfigureAwait(false) == idle || !await died.ConfigureAwait(false))
            {
                await watching.CancelAsync().ConfigureAwait(false);
                await idle.ConfigureAwait(false);
                return;
            }

            // The dead dispatcher's ask ends in a timeout nobody waits for.
            idle.ObserveFault();
            if (ReferenceEquals(Volatile.Read(ref slot.Dispatcher), dispatcher))
            {
                return;
            }
        }
    }

    // The queue is detached (IsOffline) before this runs, so no round that starts now hands a
    // request to a driver; but a round already past that check may still be doing so, and a
    // teardown past its drain timeout fails whatever the driver holds right after this (told first
    // with IBlockDriver.Abandon, which a file device answers once the kernel answered what it
    // holds). A request still on its way into the kernel would be failed while the kernel takes
    // its buffer (a review of the slow-disk fix). So detaching waits for every round in progress,
    // as blk_mq_quiesce_queue waits for dispatch in progress, and as the ring runtime's loops
    // finish their round before they exit. A dispatcher that does not answer within drain-timeout
    // plus 10 s (a driver blocked in QueueRq) does not keep the teardown from going on.
    public async Task DetachAsync()
    {
        for (var i = 0; i < _slots.Length; i++)
        {
            try
            {
                await WaitSlotIdleAsync(i, _askTimeout + TimeSpan.FromSeconds(10)).ConfigureAwait(false);
            }
#pragma warning disable CA1031 // a teardown must go on whatever the wait met
            catch (Exception)
#pragma warning restore CA1031
            {
                // Bounded (see above), and never a reason for the teardown to fail: an ask made
                // while the actor system terminates under a removal in progress fails too.
            }
        }
    }

    /// <summary>
    /// Called by the dispatcher of hardware queue <paramref name="index"/> at the start of its turn,
    /// before it takes a batch: a request staged from now on sends another <see cref="HardwareQueue.Run"/>.
    /// </summary>
    public void BeginTurn(int index) => Interlocked.Exchange(ref _slots[index].Scheduled, 0);

    /// <summary>True when <paramref name="actor"/> is the dispatcher of hardware queue <paramref name="index"/>.</summary>
    public bool IsDispatcher(int index, IActorRef actor) => Volatile.Read(ref _slots[index].Dispatcher).Equals(actor);

    /// <summary>
    /// Makes <paramref name="dispatcher"/> the dispatcher of hardware queue <paramref name="index"/>
    /// (the previous one is dead) and runs it.
    /// </summary>
    public void SetDispatcher(int index, IActorRef dispatcher)
    {
        var slot = _slots[index];
        Volatile.Write(ref slot.Dispatcher, dispatcher);
        Interlocked.Exchange(ref slot.Scheduled, 1);
        dispatcher.Tell(HardwareQueue.Run.Instance, ActorRefs.NoSender);
    }

    /// <summary>
    /// Runs, in the turn of <paramref name="ctx"/>'s actor (on its CPU), what was published to the
    /// context's inbox: at most <see cref="DrainBatch"/> items, oldest first. The bios' requests
    /// are staged on their hardware queues and each queue's dispatcher is sent one Run for all of
    /// them. What is left (more than a batch, or items behind one whose path threw) is drained by
    /// a later turn, after the other actors of the CPU's thread had theirs.
    /// </summary>
    /// <returns>The number of items run.</returns>
    public int Drain(SoftwareContext ctx)
    {
        var inbox = _inboxes[ctx.Cpu];

        // Cleared before the first take (a full fence): an item published from now on sends another
        // DrainInbox unless this turn takes it. Pairs with the fence in Post.
        Interlocked.Exchange(ref inbox.Scheduled, 0);
        var queue = ctx.Queue;
        var n = 0;
        try
        {
            while (n < DrainBatch && inbox.Ring.TryTake(out var item))
            {
                n++;
                if (item is Request)
                {
                    inbox.Completions++;
                }

                Run(queue, item);
            }
        }
        finally
        {
            inbox.Drained += n;
            inbox.Turns++;
            if (!inbox.Ring.IsEmpty)
            {
                Wake(ctx.Cpu, inbox);
            }
        }

        return n;
    }

    /// <summary>
    /// Counters of <paramref name="cpu"/>'s inbox (tests and diagnostics): the <see cref="DrainInbox"/>
    /// messages sent, the items that travelled as messages of their own because the inbox was full,
    /// the items run by <see cref="Drain"/> and in how many turns, and the items waiting now.
    /// </summary>
    public (long Messages, long Overflows, long Drained, long Turns, int Waiting) InboxCounters(int cpu)
    {
        var inbox = _inboxes[cpu];
        return (Interlocked.Read(ref inbox.Messages), Interlocked.Read(ref inbox.Overflows),
            Volatile.Read(ref inbox.Drained), Volatile.Read(ref inbox.Turns), inbox.Ring.Count);
    }

    /// <summary>
    /// The runtime's state for a stall report (tests and diagnostics): each hardware queue's
    /// dispatcher, whether a <see cref="HardwareQueue.Run"/> is on its way, how many messages its
    /// mailbox holds and which Akka dispatcher runs it (a blocking driver's actor has a pinned
    /// thread of its own, not its CPU's thread); each inbox's flag and counters; each CPU thread's
    /// queue and sleep state.
    /// </summary>
    public string Describe()
    {
        var lines = new List<string>();
        for (var i = 0; i < _slots.Length; i++)
        {
            var dispatcher = Volatile.Read(ref _slots[i].Dispatcher);
            var mailbox = (dispatcher as ActorRefWithCell)?.Underlying is ActorCell cell ? $"{cell.Mailbox?.MessageQueue.Count} message(s), {(cell.IsTerminated ? "terminated" : "live")}, on {cell.Dispatcher.Id}" : "no local cell";
            lines.Add($"hctx {i}: Run on its way {Volatile.Read(ref _slots[i].Scheduled)}, dispatcher {dispatcher.Path} ({mailbox})");
        }

        for (var cpu = 0; cpu < _inboxes.Length; cpu++)
        {
            var (messages, overflows, drained, turns, waiting) = InboxCounters(cpu);
            lines.Add($"cpu {cpu} inbox: DrainInbox on its way {Volatile.Read(ref _inboxes[cpu].Scheduled)}, {waiting} waiting, {messages} message(s), {overflows} overflow(s), {drained} drained in {turns} turn(s); thread: {_threads[cpu]?.Describe() ?? "none"}");
        }

        return string.Join(Environment.NewLine, lines);
    }

    /// <summary>
    /// Completions run by <see cref="Drain"/> on <paramref name="cpu"/>'s thread (tests and
    /// diagnostics): requests redirected there by rq_affinity or handed over from a thread foreign
    /// to the CPUs (<see cref="CompletesInPlace"/>).
    /// </summary>
    public long CompletionsDrained(int cpu) => Volatile.Read(ref _inboxes[cpu].Completions);

    /// <summary>
    /// Runs everything left in <paramref name="ctx"/>'s inbox when its actor stops, so that no
    /// item is stranded where nobody looks: on a torn-down queue each fails with Offline, on a
    /// live one (a restart) it is staged for the driver actor.
    /// </summary>
    public void DrainOnStop(SoftwareContext ctx)
    {
        var inbox = _inboxes[ctx.Cpu];
        var queue = ctx.Queue;
        while (inbox.Ring.TryTake(out var item))
        {
            inbox.Drained++;
            Run(queue, item);
        }
    }

    // An inbox item: a bio to submit, or a request whose completion was redirected here.
    private static void Run(RequestQueue queue, object item)
    {
        if (item is Bio bio)
        {
            queue.SubmitBio(bio);
        }
        else
        {
            queue.EndRequest((Request)item);
        }
    }

    // Hands a bio or a redirected request to cpu's context actor from any thread: one publish to
    // its inbox, and one DrainInbox for all items published until the actor's next turn.
    private void Post(int cpu, object item)
    {
        var inbox = _inboxes[cpu];
        if (!inbox.Ring.TryPublish(item))
        {
            // More items wait than the inbox holds: this one travels as a message of its own (the
            // context actor takes a Bio or a Request message as the same command).
            Interlocked.Increment(ref inbox.Overflows);
            _contexts[cpu].Tell(item, ActorRefs.NoSender);
            return;
        }

        // Dekker pair with the exchange in Drain: the item is visible before the flag is read, so
        // either this producer sees the flag cleared or the draining turn sees the item. Reading
        // the flag first keeps producers of a burst from bouncing its cache line.
        Interlocked.MemoryBarrier();
        if (Volatile.Read(ref inbox.Scheduled) == 0)
        {
            Wake(cpu, inbox);
        }
    }

    private void Wake(int cpu, Inbox inbox)
    {
        if (Interlocked.Exchange(ref inbox.Scheduled, 1) == 0)
        {
            Interlocked.Increment(ref inbox.Messages);
            _contexts[cpu].Tell(DrainInbox.Instance, ActorRefs.NoSender);
        }
    }

    /// <summary>
    /// Most inbox items one turn of a context actor runs; the rest wait for its next turn, so the
    /// driver actors on the same thread dispatch what the turn staged without waiting for a long
    /// burst to end (the batch of a driver round, <see cref="DeviceDriverActor.DispatchBatchSize"/>).
    /// </summary>
    internal const int DrainBatch = 64;

    /// <summary>
    /// Slots of each context's inbox. Bios are not bounded by tags, so the inbox may fill; an item
    /// that finds it full is sent as a message of its own. 256 covers the bursts of a few jobs at
    /// QD32 for 4 KiB of memory per context.
    /// </summary>
    internal const int InboxCapacity = 256;

    /// <summary>Tells a software-context actor to run its inbox (<see cref="Drain"/>). One is on its way per context at a time.</summary>
    internal sealed class DrainInbox : INoSerializationVerificationNeeded, IDeadLetterSuppression
    {
        /// <summary>The instance.</summary>
        public static readonly DrainInbox Instance = new();

        private DrainInbox()
        {
        }
    }

    // A context's inbox. Scheduled is 1 while a DrainInbox is on its way (or the actor is in its
    // turn before Drain cleared it).
    private sealed class Inbox
    {
        public readonly MpscRing<object> Ring = new(InboxCapacity);
        public int Scheduled;
        public long Messages;
        public long Overflows;

        // Written by the context actor's turn only.
        public long Drained;
        public long Completions;
        public long Turns;
    }

    private sealed class Slot(IActorRef dispatcher)
    {
        public IActorRef Dispatcher = dispatcher;

        // 1 while a Run is on its way to the dispatcher (or it is in its turn before BeginTurn).
        public int Scheduled;
    }
}

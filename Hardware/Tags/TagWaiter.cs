namespace ActorBlk.Hardware.Tags;

/// <summary>
/// Something waiting for a tag to be freed: an entry on one of an <see cref="SBitmapQueue"/>'s
/// wait queues. The block layer never blocks a thread for a tag; a waiter is called back instead.
/// </summary>
/// <remarks>
/// A waiter is on at most one wait queue at a time. Exactly one of two things ends a wait: a
/// waker removes it and calls <see cref="OnTagAvailable"/>, or the waiter cancels itself because
/// its own retry succeeded. The state word decides which, so a waiter never runs twice.
/// </remarks>
public abstract class TagWaiter
{
    private const int Idle = 0;
    private const int Waiting = 1;
    private const int Woken = 2;

    private int _state;

    internal TagWaiter? NextWaiter { get; set; }

    internal TagWaiter? PreviousWaiter { get; set; }

    internal int WaitQueueIndex { get; set; } = -1;

    internal SBitmapQueue? WaitingOn { get; set; }

    /// <summary>
    /// The map whose freed tag woke this waiter, until the waiter retries (null otherwise). A
    /// woken bio goes straight back to the tag without trying to merge, as the kernel's task woken
    /// in <c>blk_mq_get_tag</c> retries the allocation it slept in: a wake-up stands for a freed
    /// tag, and woken bios that merged used wake-ups up without taking their tags, until fewer
    /// requests were in flight than a wake batch and the waiters left were never woken
    /// (<c>TagWakeMergeSpec</c>). A waiter that takes no tag from this map (it moved to another
    /// hardware queue, or failed) hands the wake-up back (<see cref="SBitmapQueue.CompensateWakeUp"/>),
    /// as <c>blk_mq_get_tag</c>'s "fake wake up on previous queue for compensating the wake up miss".
    /// </summary>
    internal SBitmapQueue? WokenBy { get; set; }

    /// <summary>True while the waiter sits on a wait queue.</summary>
    public bool IsWaiting => Volatile.Read(ref _state) == Waiting;

    /// <summary>
    /// Called, without any lock held, after a waker removed this waiter from its wait queue. The
    /// waiter should retry its allocation (on its own context: a waiter must not do long work on
    /// the thread that freed the tag).
    /// </summary>
    protected internal abstract void OnTagAvailable();

    internal void MarkWaiting() => Volatile.Write(ref _state, Waiting);

    internal bool TryMarkWoken() => Interlocked.CompareExchange(ref _state, Woken, Waiting) == Waiting;

    internal bool TryCancel() => Interlocked.CompareExchange(ref _state, Idle, Waiting) == Waiting;

    internal void Reset() => Volatile.Write(ref _state, Idle);
}

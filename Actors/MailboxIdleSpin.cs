namespace ActorBlk.Actors;

/// <summary>
/// Whether an idle per-CPU mailbox thread keeps spinning or parks (<see cref="MailboxDispatcher"/>).
/// Pure logic over timestamps the caller reads, so specs drive it with a clock of their own.
/// </summary>
/// <remarks>
/// <para>
/// The thread spins <c>spin</c> ticks after its queue ran empty. When that interval ends and work
/// is expected (I/O submitted on this CPU is still outstanding: its completion, or the next bio its
/// submitter sends from an end-io on another thread, will arrive here soon), it spins another
/// interval, and so on, up to <c>busySpin</c> ticks after the queue ran empty. It parks once an
/// interval ended with nothing expected at this check and at the one before (a grace interval:
/// the last completion makes the count drop to zero just before its end-io publishes the next
/// bio), or at the bound.
/// </para>
/// <para>
/// Without this, a thread whose work comes back from another thread (null's timer completions,
/// an io_uring reaper, an application's end-io) parked after the short spin, and nearly every
/// burst paid a futex wake and a context switch of the parked thread.
/// </para>
/// </remarks>
internal struct MailboxIdleSpin
{
    private readonly long _spinTicks;
    private readonly long _busySpinTicks;
    private long _deadline;
    private long _limit;
    private bool _expectedBefore;

    /// <summary>Creates the policy.</summary>
    /// <param name="spinTicks">The idle spin: how long the thread spins with nothing expected (at least one check).</param>
    /// <param name="busySpinTicks">The bound of the spin while work is expected, from the moment the queue ran empty; at most <paramref name="spinTicks"/> turns it off.</param>
    public MailboxIdleSpin(long spinTicks, long busySpinTicks)
    {
        _spinTicks = Math.Max(0, spinTicks);
        _busySpinTicks = Math.Max(_spinTicks, busySpinTicks);
    }

    /// <summary>Intervals extended because work was expected (or in grace after it was).</summary>
    public long Extensions { get; private set; }

    /// <summary>Spins that ended at the bound while work was still expected.</summary>
    public long BoundReached { get; private set; }

    /// <summary>The queue ran empty at <paramref name="now"/>: the spin starts.</summary>
    public void Begin(long now)
    {
        _deadline = now + _spinTicks;
        _limit = now + _busySpinTicks;
        _expectedBefore = false;
    }

    /// <summary>True while the current interval lasts (the caller keeps looking at its queue).</summary>
    public readonly bool InInterval(long now) => now < _deadline;

    /// <summary>
    /// The current interval ended at <paramref name="now"/>: true to spin another one, false to
    /// park. <paramref name="expectsWork"/> is asked only when the bound leaves room for another interval.
    /// </summary>
    public bool Extend<TProbe>(long now, ref TProbe expectsWork)
        where TProbe : struct, IExpectedWorkProbe
    {
        if (now >= _limit)
        {
            if (_busySpinTicks > _spinTicks && expectsWork.ExpectsWork())
            {
                BoundReached++;
            }

            return false;
        }

        var expected = expectsWork.ExpectsWork();
        if (!expected && !_expectedBefore)
        {
            return false;
        }

        _expectedBefore = expected;
        Extensions++;
        _deadline = Math.Min(_limit, now + Math.Max(1, _spinTicks));
        return true;
    }
}

/// <summary>Asked by an idle mailbox thread whether work is expected on it soon.</summary>
internal interface IExpectedWorkProbe
{
    /// <summary>True when work is expected soon (I/O submitted on the thread's CPU is outstanding).</summary>
    bool ExpectsWork();
}

/// <summary>
/// Something whose work comes back to a per-CPU mailbox thread: the thread asks it before it
/// parks (<see cref="MailboxDispatcher.Watch"/>).
/// </summary>
internal interface IMailboxWorkSource
{
    /// <summary>
    /// True when work for the thread is expected soon, e.g. requests submitted on its CPU are
    /// outstanding. Called by the idle thread; must be cheap and must not allocate.
    /// </summary>
    bool ExpectsWork { get; }
}

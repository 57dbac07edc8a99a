using System.Diagnostics;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Drivers;

/// <summary>
/// Completes requests after a delay, on its own thread: the "interrupt" of null_blk's timer mode
/// (irqmode 2, <c>completion_nsec</c>) and of injected latency.
/// </summary>
/// <remarks>
/// Delays are microseconds, below what a sleeping thread can hit, so the thread spins while the
/// next completion is less than <see cref="SpinThreshold"/> away and sleeps otherwise; with nothing
/// scheduled it parks. Scheduling takes a lock on a priority queue; nothing is allocated per
/// request once the queue has grown.
/// </remarks>
public sealed class CompletionTimer : IDisposable
{
    /// <summary>Below this distance to the next due completion the thread spins instead of sleeping.</summary>
    public static readonly TimeSpan SpinThreshold = TimeSpan.FromMilliseconds(2);

    private readonly PriorityQueue<Entry, long> _due = new();
    private readonly object _lock = new();
    private readonly ManualResetEventSlim _wake = new(false, spinCount: 0);
    private readonly Thread _thread;
    private volatile bool _stopping;
    private long _fired;

    /// <summary>Starts the timer thread.</summary>
    public CompletionTimer(string name)
    {
        _thread = new Thread(Run) { IsBackground = true, Name = $"actorblk-timer/{name}" };
        _thread.Start();
    }

    /// <summary>Completions delivered so far.</summary>
    public long Fired => Interlocked.Read(ref _fired);

    /// <summary>Number of completions waiting.</summary>
    public int Pending
    {
        get
        {
            lock (_lock)
            {
                return _due.Count;
            }
        }
    }

    /// <summary>Completes <paramref name="rq"/> (incarnation <paramref name="generation"/>) with <paramref name="status"/> after <paramref name="delay"/>.</summary>
    public void Schedule(Request rq, uint generation, BlockStatus status, TimeSpan delay)
    {
        ArgumentNullException.ThrowIfNull(rq);
        var due = Stopwatch.GetTimestamp() + (long)(delay.TotalSeconds * Stopwatch.Frequency);
        bool first;
        lock (_lock)
        {
            first = _due.Count == 0 || due < PeekDue();
            _due.Enqueue(new Entry(rq, generation, status), due);
        }

        if (first)
        {
            _wake.Set();
        }
    }

    /// <summary>Stops the thread; completions still pending are delivered first.</summary>
    public void Dispose()
    {
        _stopping = true;
        _wake.Set();
        if (Thread.CurrentThread != _thread)
        {
            _thread.Join();
        }

        _wake.Dispose();
    }

    private long PeekDue() => _due.TryPeek(out _, out var due) ? due : long.MaxValue;

    private void Run()
    {
        var spinTicks = (long)(SpinThreshold.TotalSeconds * Stopwatch.Frequency);
        while (true)
        {
            Entry entry;
            long due;
            _wake.Reset();
            lock (_lock)
            {
                if (!_due.TryPeek(out entry, out due))
                {
                    if (_stopping)
                    {
                        return;
                    }

                    due = long.MaxValue;
                }
                else if (due <= Stopwatch.GetTimestamp() || _stopping)
                {
                    _due.Dequeue();
                }
                else
                {
                    entry = default;
                }
            }

            if (entry.Request is not null)
            {
                entry.Request.Complete(entry.Status, entry.Generation);
                Interlocked.Increment(ref _fired);
                continue;
            }

            var wait = due - Stopwatch.GetTimestamp();
            if (due == long.MaxValue)
            {
                _wake.Wait();
            }
            else if (wait > spinTicks)
            {
                _wake.Wait(TimeSpan.FromSeconds((double)(wait - spinTicks) / Stopwatch.Frequency));
            }
            else
            {
                Thread.SpinWait(16);
            }
        }
    }

    private readonly record struct Entry(Request Request, uint Generation, BlockStatus Status);
}

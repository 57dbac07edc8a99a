using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Stacking;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Samples.MirrorJournal;

/// <summary>
/// Appends records to a journal device, one per slot in sequence order, each written with FUA (a
/// journal commit: acknowledged only once it is stable on every leg that takes it), with up to
/// <c>depth</c> appends in flight and at most <c>rate</c> appends per second (0: as fast as it can).
/// </summary>
public sealed class JournalWriter(IBlockDevice journal, MirrorTarget mirror, long slots, int depth, double rate)
{
    private readonly object _lock = new();
    private readonly List<(long Count, TaskCompletionSource Reached)> _waiters = [];
    private long _written;
    private long _writtenDegraded;

    /// <summary>Records acknowledged so far (all of them in slots 0 .. count - 1: appends end in order or the run stops).</summary>
    public long Written => Interlocked.Read(ref _written);

    /// <summary>Records acknowledged while the mirror was degraded (a leg not in sync).</summary>
    public long WrittenDegraded => Interlocked.Read(ref _writtenDegraded);

    /// <summary>The append that failed, if one did (the run stops at the first).</summary>
    public Exception? Failure { get; private set; }

    /// <summary>True when every slot is used.</summary>
    public bool Full => Written >= slots;

    /// <summary>Completes when <paramref name="count"/> records are acknowledged (never, if the writer stops first).</summary>
    public Task WhenWritten(long count)
    {
        lock (_lock)
        {
            if (Written >= count)
            {
                return Task.CompletedTask;
            }

            var reached = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _waiters.Add((count, reached));
            return reached.Task;
        }
    }

    /// <summary>Appends until <paramref name="limit"/> records are written, the journal is full, an append fails or <paramref name="stop"/> is cancelled.</summary>
    public async Task RunAsync(long limit, CancellationToken stop)
    {
        limit = Math.Min(limit, slots);
        var buffers = Enumerable.Range(0, depth).Select(_ => journal.AllocateBuffer(JournalRecord.SlotBytes)).ToArray();
        var inflight = new Queue<(long Sequence, Task<BlockStatus> Io)>();
        var interval = rate > 0 ? TimeSpan.FromSeconds(1 / rate) : TimeSpan.Zero;
        var due = DateTime.UtcNow;
        try
        {
            for (var next = Written; next < limit && !stop.IsCancellationRequested && Failure is null; next++)
            {
                if (inflight.Count == depth && !await CompleteOldestAsync(inflight))
                {
                    break;
                }

                if (interval > TimeSpan.Zero)
                {
                    // Paced, without catching up in a burst after a stall (the leg's loss holds appends for a few seconds).
                    var now = DateTime.UtcNow;
                    due = due < now ? now : due;
                    if (due > now)
                    {
                        try
                        {
                            await Task.Delay(due - now, stop);
                        }
                        catch (OperationCanceledException)
                        {
                            break;
                        }
                    }

                    due += interval;
                }

                var buffer = buffers[next % depth];
                JournalRecord.Encode(buffer.Memory.Span, next, DateTime.UtcNow);
                inflight.Enqueue((next, journal.ExecuteAsync(BlockOp.Write, next * JournalRecord.SlotBytes, JournalRecord.SlotBytes, buffer.Memory, RequestFlags.Fua).AsTask()));
            }

            while (inflight.Count > 0 && await CompleteOldestAsync(inflight))
            {
            }

            // Appends still in flight after a failure end before their buffers go.
            await Task.WhenAll(inflight.Select(i => i.Io));
        }
        finally
        {
            foreach (var b in buffers)
            {
                ((IDisposable)b).Dispose();
            }
        }
    }

    // Waits for the oldest append: acknowledged records count in order, so Written is always a prefix.
    private async Task<bool> CompleteOldestAsync(Queue<(long Sequence, Task<BlockStatus> Io)> inflight)
    {
        var (sequence, io) = inflight.Dequeue();
        var status = await io;
        if (status != BlockStatus.Ok)
        {
            Failure = new BlockIoException(journal.Name, BlockOp.Write, sequence * JournalRecord.SlotBytes, JournalRecord.SlotBytes, status);
            return false;
        }

        if (mirror.Degraded > 0)
        {
            Interlocked.Increment(ref _writtenDegraded);
        }

        var written = Interlocked.Increment(ref _written);
        lock (_lock)
        {
            for (var i = _waiters.Count - 1; i >= 0; i--)
            {
                if (_waiters[i].Count <= written)
                {
                    _waiters[i].Reached.TrySetResult();
                    _waiters.RemoveAt(i);
                }
            }
        }

        return true;
    }
}

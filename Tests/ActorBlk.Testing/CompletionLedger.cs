using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Testing;

/// <summary>
/// Counts completions where they happen, in the bio's end-io call-back, per request id: a request
/// completed twice shows up as an id counted twice, one never completed as an id counted zero
/// times. Counting after an <c>await</c> cannot show either (a task completes once, and a lost
/// completion just hangs the awaiter). Every I/O submitted through <see cref="Submit"/> gets the
/// next id.
/// </summary>
public sealed class CompletionLedger
{
    private readonly int[] _completions;
    private long _submitted;
    private long _completed;

    /// <summary>A ledger for up to <paramref name="capacity"/> requests.</summary>
    public CompletionLedger(int capacity) => _completions = new int[capacity];

    /// <summary>Requests submitted.</summary>
    public long Submitted => Interlocked.Read(ref _submitted);

    /// <summary>End-io call-backs received, whatever their request (a duplicate counts again).</summary>
    public long Completed => Interlocked.Read(ref _completed);

    /// <summary>Ids whose end-io ran more than once.</summary>
    public int Duplicated => Enumerable.Range(0, (int)Math.Min(Submitted, _completions.Length)).Count(i => Volatile.Read(ref _completions[i]) > 1);

    /// <summary>Ids submitted whose end-io never ran.</summary>
    public int Missing => Enumerable.Range(0, (int)Math.Min(Submitted, _completions.Length)).Count(i => Volatile.Read(ref _completions[i]) == 0);

    /// <summary>
    /// Submits one I/O with an end-io call-back that records its completion; the task completes
    /// with its status after the record is made.
    /// </summary>
    public Task<BlockStatus> Submit(IBlockDevice device, BlockOp op, long offset, long length, Memory<byte> buffer, int cpu = IBlockDevice.AnyCpu, RequestFlags flags = RequestFlags.None)
    {
        ArgumentNullException.ThrowIfNull(device);
        var id = Interlocked.Increment(ref _submitted) - 1;
        if (id >= _completions.Length)
        {
            throw new InvalidOperationException($"The ledger holds {_completions.Length} requests.");
        }

        var entry = new Entry(this, (int)id);
        device.SubmitWithEndIo(op, offset, length, buffer, flags, cpu, entry);
        return entry.Status.Task;
    }

    private void Record(int id)
    {
        Interlocked.Increment(ref _completions[id]);
        Interlocked.Increment(ref _completed);
    }

    private sealed class Entry(CompletionLedger ledger, int id) : IBioEndIo
    {
        public TaskCompletionSource<BlockStatus> Status { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public void OnBioComplete(Bio bio, BlockStatus status)
        {
            ledger.Record(id);
            Status.TrySetResult(status);
        }
    }
}

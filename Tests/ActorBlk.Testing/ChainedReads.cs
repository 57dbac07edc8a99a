using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Testing;

/// <summary>
/// One read in flight at a time, each submitted from the previous one's completion (as the
/// bench's slots and fio's loop do): <paramref name="count"/> reads of 4 KiB at
/// <paramref name="sectorOf"/>(i) on <paramref name="cpu"/>. <see cref="Done"/> completes after the
/// last, or fails at the first error; <see cref="Completed"/> lists the sectors in completion order.
/// </summary>
public sealed class ChainedReads(RequestQueue queue, int count, Func<int, long> sectorOf, int cpu = 0) : IBioEndIo
{
    private readonly TaskCompletionSource _done = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _submitted;

    /// <summary>Completes once every read completed.</summary>
    public Task Done => _done.Task;

    /// <summary>The sectors in the order they completed (one at a time: the order of dispatch).</summary>
    public List<long> Completed { get; } = [];

    /// <summary>Starts the chain (or, from a completion, goes on with it).</summary>
    public ChainedReads Start()
    {
        SubmitNext();
        return this;
    }

    private void SubmitNext()
    {
        if (_submitted == count)
        {
            _done.TrySetResult();
            return;
        }

        var bio = queue.Bios.Rent();
        bio.Op = BlockOp.Read;
        bio.Sector = sectorOf(_submitted++);
        bio.Size = 4096;
        bio.Buffer = new byte[4096];
        bio.Cpu = cpu;
        bio.EndIo = this;
        queue.Submit(bio);
    }

    /// <inheritdoc />
    public void OnBioComplete(Bio bio, BlockStatus status)
    {
        if (status != BlockStatus.Ok)
        {
            _done.TrySetException(new InvalidOperationException($"read failed: {status}"));
            return;
        }

        Completed.Add(bio.Sector);
        SubmitNext();
    }
}

using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;

namespace ActorBlk.Hardware.Queues;

// Polled completion of a request queue.

public sealed partial class RequestQueue
{
    /// <summary>
    /// Polls for the completion of the request behind <paramref name="cookie"/> (<c>blk_poll</c>):
    /// spins the hardware queue's completion processing in the caller until that request completed.
    /// A non-pollable queue, <see cref="PollCookie.None"/> or a stale cookie returns 0 at once.
    /// </summary>
    /// <returns>The number of completions found by polling.</returns>
    public int Poll(uint cookie)
    {
        if (cookie == PollCookie.None || !_ioPoll)
        {
            return 0;
        }

        var index = UniqueTags.HardwareQueueOf(cookie);
        var tag = UniqueTags.TagOf(cookie);
        if ((uint)index >= (uint)_hctxs.Length)
        {
            return 0;
        }

        var hctx = _hctxs[index];
        if (hctx.Type != HctxType.Poll || (uint)tag >= (uint)hctx.Tags.NrTags)
        {
            return 0;
        }

        var rq = hctx.Tags[tag];
        var allocation = rq.Allocation;
        if (!hctx.Tags.IsAllocated(tag) || rq.Queue != this || (rq.Flags & RequestFlags.Polled) == 0)
        {
            return 0;
        }

        var found = 0;
        var spin = default(SpinWait);
        while (rq.Allocation == allocation && hctx.Tags.IsAllocated(tag) && rq.Queue == this)
        {
            var n = Driver.Poll(hctx);
            if (n < 0)
            {
                break;
            }

            found += n;
            if (n == 0)
            {
                spin.SpinOnce(sleep1Threshold: -1);
            }
        }

        return found;
    }

    /// <summary>
    /// Runs one round of completion processing on every poll queue and returns the completions it
    /// found: how a poller whose bio has no cookie (merged into another bio's request, or not yet
    /// built) still makes progress, as io_uring's iopoll loop reaps every queue it has I/O on.
    /// </summary>
    internal int PollAll()
    {
        if (!_ioPoll)
        {
            return 0;
        }

        var found = 0;
        foreach (var hctx in _hctxs)
        {
            if (hctx.Type == HctxType.Poll)
            {
                var n = Driver.Poll(hctx);
                if (n > 0)
                {
                    found += n;
                }
            }
        }

        return found;
    }
}

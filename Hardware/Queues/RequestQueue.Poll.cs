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
            if (!TryPollDriver(hctx, out var n) || n < 0)
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
            if (hctx.Type == HctxType.Poll && TryPollDriver(hctx, out var n))
            {
                if (n > 0)
                {
                    found += n;
                }
            }
        }

        return found;
    }

    /// <summary>
    /// Lets the supervisor report a driver's poll fault again: a reset or reopen of the device
    /// ended, so a poll that throws now is a new device error, not the one it covered.
    /// </summary>
    internal void ClearPollFaults()
    {
        foreach (var hctx in _hctxs)
        {
            hctx.ClearPollFault();
        }
    }

    // The driver's poll, on the caller's thread. A throw is a driver bug, handled as one from
    // QueueRq: a device error for the supervisor (a reset, or the device given up), never the
    // polling caller's exception (an I/O submitter spinning on its request got the driver's
    // exception before, and its request's completion was left to whoever polled next). Reported
    // once until the reset or reopen it causes ends, so a poller spinning on a driver that always
    // throws does not queue one reset per spin. The driver is still polled meanwhile: a throw now
    // and then does not keep it from reaping what it completed.
    private bool TryPollDriver(HardwareContext hctx, out int found)
    {
        try
        {
            found = Driver.Poll(hctx);
            return true;
        }
        catch (Exception ex)
        {
            found = 0;
            if (hctx.TryMarkPollFault())
            {
                Events?.OnDeviceError(hctx, ex);
            }

            return false;
        }
    }
}

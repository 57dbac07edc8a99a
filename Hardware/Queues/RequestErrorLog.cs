using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Queues;

/// <summary>
/// A request that ended with an error, as the kernel's <c>blk_print_req_error</c> reports it
/// (<c>"I/O error, dev sda, sector 2048 op 0x1:(WRITE) flags 0x800 ..."</c>): the status, the
/// device, the first sector, the operation, its flags and its size. Read from the request before
/// it is freed, so it stays valid however long the receiver keeps it.
/// </summary>
/// <param name="Device">The device's name.</param>
/// <param name="HardwareQueue">The index of the hardware queue the request was dispatched on.</param>
/// <param name="Op">The operation.</param>
/// <param name="Flags">The operation's flags.</param>
/// <param name="Sector">The first 512-byte sector.</param>
/// <param name="Bytes">The request's size in bytes.</param>
/// <param name="Status">The status it ended with (never <see cref="BlockStatus.Ok"/>).</param>
public readonly record struct RequestError(string Device, int HardwareQueue, BlockOp Op, RequestFlags Flags, long Sector, int Bytes, BlockStatus Status)
{
    /// <summary>The kernel's wording: <c>I/O error, dev disk0, sector 2048 op write flags Sync, 4096 bytes, hctx 0</c>.</summary>
    public override string ToString() =>
        $"{Status.Describe()} error, dev {Device}, sector {Sector} op {Op.Name()} flags {Flags}, {Bytes} bytes, hctx {HardwareQueue}";
}

/// <summary>
/// lib/ratelimit.c's <c>___ratelimit</c>, which <c>printk_ratelimited</c> applies to every I/O
/// error message: at most <see cref="Burst"/> messages in each <see cref="IntervalMs"/> window
/// (the kernel's defaults, <c>DEFAULT_RATELIMIT_BURST</c> 10 in <c>DEFAULT_RATELIMIT_INTERVAL</c>
/// 5 s); the ones held back are counted, and the count is handed to the first message of the next
/// window ("N callbacks suppressed"). Only failed requests come here, never the per-I/O path.
/// </summary>
internal sealed class RequestErrorLog(long intervalMs = RequestErrorLog.DefaultIntervalMs, int burst = RequestErrorLog.DefaultBurst)
{
    /// <summary><c>DEFAULT_RATELIMIT_INTERVAL</c>: 5 s.</summary>
    public const long DefaultIntervalMs = 5_000;

    /// <summary><c>DEFAULT_RATELIMIT_BURST</c>: 10 messages.</summary>
    public const int DefaultBurst = 10;

    private readonly Lock _lock = new();
    private bool _started;
    private long _begin;
    private int _printed;
    private int _missed;

    /// <summary>The window's length in milliseconds.</summary>
    public long IntervalMs { get; } = intervalMs;

    /// <summary>Messages let through per window.</summary>
    public int Burst { get; } = burst;

    /// <summary>
    /// True when a message at <paramref name="nowMs"/> may be printed; <paramref name="suppressed"/>
    /// is then the number held back in the window before (0 otherwise), reported once.
    /// </summary>
    public bool TryEnter(long nowMs, out int suppressed)
    {
        lock (_lock)
        {
            suppressed = 0;
            if (!_started)
            {
                _started = true;
                _begin = nowMs;
            }

            if (nowMs - _begin > IntervalMs)
            {
                // A new window (the kernel's time_is_before_jiffies(begin + interval)): what the last one held back is reported with its first message.
                _begin = nowMs;
                _printed = 0;
                suppressed = _missed;
                _missed = 0;
            }

            if (_printed < Burst)
            {
                _printed++;
                return true;
            }

            // Held back: the count carries over to the next window's first message.
            _missed += suppressed + 1;
            suppressed = 0;
            return false;
        }
    }
}

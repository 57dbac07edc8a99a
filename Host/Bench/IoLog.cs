using System.Globalization;
using System.Text;

namespace ActorBlk.Host.Bench;

/// <summary>
/// One in-flight slot's share of a job's I/O logs (fio's <c>write_lat_log</c>,
/// <c>write_iops_log</c>), written by the flow of the slot's current I/O only, so without locks.
/// Either every I/O as an entry (<c>log_avg_msec=0</c>, fio's default) or, windowed, per window of
/// <c>log_avg_msec</c> the count and latency sum of each direction. The same windowed counts at a
/// fixed width draw the IOPS curve of <c>--plot</c>.
/// </summary>
internal sealed class IoLog
{
    private readonly int _windowMs;
    private readonly List<IoLogEntry>? _entries;
    private long[] _counts = [];
    private long[] _sums = [];

    /// <summary>A log of every I/O (<paramref name="windowMs"/> 0) or of windows of <paramref name="windowMs"/> ms.</summary>
    public IoLog(int windowMs)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(windowMs);
        _windowMs = windowMs;
        _entries = windowMs == 0 ? [] : null;
    }

    /// <summary>The window width in ms; 0 when every I/O is an entry.</summary>
    public int WindowMs => _windowMs;

    /// <summary>Records a successful I/O completed <paramref name="atNs"/> after the window opened, of latency <paramref name="latencyNs"/>.</summary>
    public void Add(long atNs, long latencyNs, bool read, int blockSize, long offset)
    {
        if (_entries is not null)
        {
            _entries.Add(new IoLogEntry(atNs / 1_000_000, latencyNs, read ? 0 : 1, blockSize, offset));
            return;
        }

        // Two slots per window: read at 2w, write at 2w + 1.
        var index = (int)Math.Min(int.MaxValue / 2 - 1, atNs / 1_000_000 / _windowMs) * 2 + (read ? 0 : 1);
        if (index >= _counts.Length)
        {
            var size = Math.Max(64, _counts.Length);
            while (size <= index)
            {
                size *= 2;
            }

            Array.Resize(ref _counts, size);
            Array.Resize(ref _sums, size);
        }

        _counts[index]++;
        _sums[index] += latencyNs;
    }

    /// <summary>
    /// The entries of several slots (one job) as one log, in time order: every I/O, or per window
    /// and direction one averaged entry stamped with the window's end, block size and offset 0
    /// (fio's windowed logging). <paramref name="iops"/> logs IOPS (1 per I/O; the window's rate,
    /// 0 in a window without completions); otherwise the latency in ns (the window's mean).
    /// </summary>
    public static IReadOnlyList<IoLogEntry> Merge(IReadOnlyList<IoLog> logs, bool iops)
    {
        ArgumentNullException.ThrowIfNull(logs);
        if (logs.Count == 0)
        {
            return [];
        }

        var windowMs = logs[0]._windowMs;
        if (windowMs == 0)
        {
            var all = logs.SelectMany(l => l._entries!).OrderBy(e => e.TimeMs).ToList();
            return iops ? [.. all.Select(e => e with { Value = 1 })] : all;
        }

        // A window in which a direction that has I/O elsewhere completed none logs 0 IOPS: the
        // rate was zero then. It has no latency entry: there was nothing to average.
        var length = logs.Max(l => l._counts.Length);
        var counts = new long[length];
        var sums = new long[length];
        foreach (var log in logs)
        {
            for (var i = 0; i < log._counts.Length; i++)
            {
                counts[i] += log._counts[i];
                sums[i] += log._sums[i];
            }
        }

        var last = Array.FindLastIndex(counts, c => c > 0) / 2;
        var used = new[] { counts.Where((_, i) => i % 2 == 0).Any(c => c > 0), counts.Where((_, i) => i % 2 == 1).Any(c => c > 0) };
        var merged = new List<IoLogEntry>();
        for (var i = 0; i < Math.Min(length, (last + 1) * 2); i++)
        {
            var count = counts[i];
            if (count > 0 || (iops && used[i % 2]))
            {
                var value = iops ? (long)Math.Round(count * 1000.0 / windowMs) : sums[i] / count;
                merged.Add(new IoLogEntry(((i / 2) + 1L) * windowMs, value, i % 2, 0, 0));
            }
        }

        return merged;
    }

    /// <summary>Writes <paramref name="entries"/> in fio's log format: <c>time, value, ddir, bs[, offset], prio</c> per line.</summary>
    public static void Write(TextWriter output, IEnumerable<IoLogEntry> entries, bool withOffset)
    {
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(entries);
        var line = new StringBuilder();
        foreach (var e in entries)
        {
            line.Clear();
            line.Append(CultureInfo.InvariantCulture, $"{e.TimeMs}, {e.Value}, {e.Direction}, {e.BlockSize}, ");
            if (withOffset)
            {
                line.Append(CultureInfo.InvariantCulture, $"{e.Offset}, ");
            }

            // Command priority: 0, ActorBlk has no high-priority submissions (fio's cmdprio).
            line.Append('0');
            output.WriteLine(line);
        }
    }
}

/// <summary>One line of a fio log.</summary>
/// <param name="TimeMs">Milliseconds since the measured window opened (fio resets its log epoch after ramp_time too).</param>
/// <param name="Value">Latency in ns, or IOPS.</param>
/// <param name="Direction">0 read, 1 write (2 would be trim).</param>
/// <param name="BlockSize">The I/O's size in bytes; 0 in a windowed log.</param>
/// <param name="Offset">The I/O's offset in bytes; 0 in a windowed log.</param>
internal readonly record struct IoLogEntry(long TimeMs, long Value, int Direction, long BlockSize, long Offset);

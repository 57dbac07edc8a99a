using System.Globalization;
using System.Text;
using ActorBlk.Hardware.Queues;

namespace ActorBlk.Host.Iostat;

/// <summary>
/// One device's line of <c>iostat</c> over an interval, computed from two successive <c>stat</c>
/// readings as sysstat does (iostat.c, rd_stats.c <c>compute_ext_disk_stats</c>): rates are deltas
/// per second; awaits are delta ticks per delta I/O (ms); request sizes are delta sectors per delta
/// I/O over 2 (kB); aqu-sz is delta time_in_queue over the interval in ms; %util is delta io_ticks
/// over the interval in ms, times 100.
/// </summary>
/// <param name="Device">The device name.</param>
/// <param name="ReadsPerSecond">r/s.</param>
/// <param name="ReadKbPerSecond">rkB/s.</param>
/// <param name="ReadMergesPerSecond">rrqm/s.</param>
/// <param name="ReadMergePercent">%rrqm: merges over merges plus I/Os.</param>
/// <param name="ReadAwait">r_await, ms.</param>
/// <param name="ReadRequestKb">rareq-sz, kB.</param>
/// <param name="WritesPerSecond">w/s.</param>
/// <param name="WriteKbPerSecond">wkB/s.</param>
/// <param name="WriteMergesPerSecond">wrqm/s.</param>
/// <param name="WriteMergePercent">%wrqm.</param>
/// <param name="WriteAwait">w_await, ms.</param>
/// <param name="WriteRequestKb">wareq-sz, kB.</param>
/// <param name="DiscardsPerSecond">d/s.</param>
/// <param name="DiscardKbPerSecond">dkB/s.</param>
/// <param name="DiscardMergesPerSecond">drqm/s.</param>
/// <param name="DiscardMergePercent">%drqm.</param>
/// <param name="DiscardAwait">d_await, ms.</param>
/// <param name="DiscardRequestKb">dareq-sz, kB.</param>
/// <param name="FlushesPerSecond">f/s.</param>
/// <param name="FlushAwait">f_await, ms.</param>
/// <param name="QueueSize">aqu-sz: the average number of requests outstanding.</param>
/// <param name="Utilization">%util: the share of the interval with at least one request in flight.</param>
/// <param name="KbRead">kB_read over the interval (the basic report).</param>
/// <param name="KbWritten">kB_wrtn over the interval.</param>
/// <param name="KbDiscarded">kB_dscd over the interval.</param>
internal sealed record IostatRow(
    string Device,
    double ReadsPerSecond, double ReadKbPerSecond, double ReadMergesPerSecond, double ReadMergePercent, double ReadAwait, double ReadRequestKb,
    double WritesPerSecond, double WriteKbPerSecond, double WriteMergesPerSecond, double WriteMergePercent, double WriteAwait, double WriteRequestKb,
    double DiscardsPerSecond, double DiscardKbPerSecond, double DiscardMergesPerSecond, double DiscardMergePercent, double DiscardAwait, double DiscardRequestKb,
    double FlushesPerSecond, double FlushAwait, double QueueSize, double Utilization,
    double KbRead, double KbWritten, double KbDiscarded)
{
    /// <summary>tps: I/Os (reads, writes and discards) per second.</summary>
    public double TransfersPerSecond => ReadsPerSecond + WritesPerSecond + DiscardsPerSecond;

    /// <summary>No read, write, discard or flush over the interval: the rows <c>-z</c> leaves out (sysstat compares the four I/O counters).</summary>
    public bool Idle => ReadsPerSecond == 0 && WritesPerSecond == 0 && DiscardsPerSecond == 0 && FlushesPerSecond == 0;
}

/// <summary>The arithmetic and the layout of <c>actorblk iostat</c>; pure, no I/O.</summary>
internal static class IostatReport
{
    /// <summary>The header of the extended report (sysstat 12's <c>iostat -x</c> columns).</summary>
    public const string ExtendedHeader =
        "Device            r/s     rkB/s   rrqm/s  %rrqm r_await rareq-sz     w/s     wkB/s   wrqm/s  %wrqm w_await wareq-sz     d/s     dkB/s   drqm/s  %drqm d_await dareq-sz     f/s f_await  aqu-sz  %util";

    /// <summary>The header of the basic report.</summary>
    public const string BasicHeader =
        "Device             tps    kB_read/s    kB_wrtn/s    kB_dscd/s    kB_read    kB_wrtn    kB_dscd";

    /// <summary>
    /// True when the device never did any I/O: no read, write, discard or flush completed since it
    /// was created (sysstat's test for an unused device, which it leaves out unless devices are named).
    /// </summary>
    public static bool NeverUsed(DiskStatSample stat) => stat.ReadIos == 0 && stat.WriteIos == 0 && stat.DiscardIos == 0 && stat.FlushIos == 0;

    /// <summary>
    /// True when a counter of <paramref name="current"/> is below its value in
    /// <paramref name="previous"/> (in_flight aside, which goes down as requests complete): the
    /// device was destroyed and created again under its name between the two readings.
    /// </summary>
    public static bool WentBack(DiskStatSample previous, DiskStatSample current) =>
        current.ReadIos < previous.ReadIos || current.ReadMerges < previous.ReadMerges || current.ReadSectors < previous.ReadSectors || current.ReadTicks < previous.ReadTicks
        || current.WriteIos < previous.WriteIos || current.WriteMerges < previous.WriteMerges || current.WriteSectors < previous.WriteSectors || current.WriteTicks < previous.WriteTicks
        || current.DiscardIos < previous.DiscardIos || current.DiscardMerges < previous.DiscardMerges || current.DiscardSectors < previous.DiscardSectors || current.DiscardTicks < previous.DiscardTicks
        || current.FlushIos < previous.FlushIos || current.FlushTicks < previous.FlushTicks
        || current.IoTicks < previous.IoTicks || current.TimeInQueue < previous.TimeInQueue;

    /// <summary>
    /// The row of <paramref name="device"/> between <paramref name="previous"/> and
    /// <paramref name="current"/>, taken <paramref name="intervalMs"/> milliseconds apart. A counter
    /// that went backwards (the device was re-created) counts from 0.
    /// </summary>
    public static IostatRow Compute(string device, DiskStatSample previous, DiskStatSample current, double intervalMs)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(intervalMs);
        var seconds = intervalMs / 1000.0;
        static double Delta(ulong before, ulong after) => after >= before ? after - before : after;
        double PerSecond(ulong before, ulong after) => Delta(before, after) / seconds;
        static double Ratio(double num, double den) => den > 0 ? num / den : 0.0;

        var rIos = Delta(previous.ReadIos, current.ReadIos);
        var wIos = Delta(previous.WriteIos, current.WriteIos);
        var dIos = Delta(previous.DiscardIos, current.DiscardIos);
        var fIos = Delta(previous.FlushIos, current.FlushIos);
        var rMerges = Delta(previous.ReadMerges, current.ReadMerges);
        var wMerges = Delta(previous.WriteMerges, current.WriteMerges);
        var dMerges = Delta(previous.DiscardMerges, current.DiscardMerges);
        var rSectors = Delta(previous.ReadSectors, current.ReadSectors);
        var wSectors = Delta(previous.WriteSectors, current.WriteSectors);
        var dSectors = Delta(previous.DiscardSectors, current.DiscardSectors);

        return new IostatRow(
            device,
            rIos / seconds, rSectors / 2 / seconds, rMerges / seconds, Ratio(rMerges, rMerges + rIos) * 100,
            Ratio(Delta(previous.ReadTicks, current.ReadTicks), rIos), Ratio(rSectors, rIos) / 2,
            wIos / seconds, wSectors / 2 / seconds, wMerges / seconds, Ratio(wMerges, wMerges + wIos) * 100,
            Ratio(Delta(previous.WriteTicks, current.WriteTicks), wIos), Ratio(wSectors, wIos) / 2,
            dIos / seconds, dSectors / 2 / seconds, dMerges / seconds, Ratio(dMerges, dMerges + dIos) * 100,
            Ratio(Delta(previous.DiscardTicks, current.DiscardTicks), dIos), Ratio(dSectors, dIos) / 2,
            fIos / seconds, Ratio(Delta(previous.FlushTicks, current.FlushTicks), fIos),
            Delta(previous.TimeInQueue, current.TimeInQueue) / intervalMs,
            PerSecond(previous.IoTicks, current.IoTicks) / 10.0,
            rSectors / 2, wSectors / 2, dSectors / 2);
    }

    /// <summary>The header of the extended report in <paramref name="unit"/> (sysstat's <c>write_disk_stat_header</c>).</summary>
    public static string ExtendedHeaderFor(IostatUnit unit) =>
        unit == IostatUnit.Kilobytes ? ExtendedHeader : ExtendedHeader.Replace("kB/s", "MB/s", StringComparison.Ordinal);

    /// <summary>The header of the basic report in <paramref name="unit"/>.</summary>
    public static string BasicHeaderFor(IostatUnit unit) =>
        unit == IostatUnit.Kilobytes ? BasicHeader : BasicHeader.Replace("kB_", "MB_", StringComparison.Ordinal);

    /// <summary>
    /// The row as <c>iostat -x</c> prints it: the name in 13 columns, then each value with
    /// <paramref name="decimals"/> decimals (<c>--dec</c>) in sysstat's widths; throughput in
    /// <paramref name="unit"/>, request sizes in kB whatever the unit, as sysstat's.
    /// </summary>
    public static string FormatExtended(IostatRow r, IostatUnit unit = IostatUnit.Kilobytes, int decimals = 2)
    {
        ArgumentNullException.ThrowIfNull(r);
        var format = "F" + decimals.ToString(CultureInfo.InvariantCulture);
        var per = Per(unit);
        var sb = new StringBuilder();
        sb.Append(CultureInfo.InvariantCulture, $"{r.Device,-13}");
        void F(double value, int width) => sb.Append(' ').Append(value.ToString(format, CultureInfo.InvariantCulture).PadLeft(width));
        F(r.ReadsPerSecond, 7); F(r.ReadKbPerSecond / per, 9); F(r.ReadMergesPerSecond, 8); F(r.ReadMergePercent, 6); F(r.ReadAwait, 7); F(r.ReadRequestKb, 8);
        F(r.WritesPerSecond, 7); F(r.WriteKbPerSecond / per, 9); F(r.WriteMergesPerSecond, 8); F(r.WriteMergePercent, 6); F(r.WriteAwait, 7); F(r.WriteRequestKb, 8);
        F(r.DiscardsPerSecond, 7); F(r.DiscardKbPerSecond / per, 9); F(r.DiscardMergesPerSecond, 8); F(r.DiscardMergePercent, 6); F(r.DiscardAwait, 7); F(r.DiscardRequestKb, 8);
        F(r.FlushesPerSecond, 7); F(r.FlushAwait, 7); F(r.QueueSize, 7); F(r.Utilization, 6);
        return sb.ToString();
    }

    /// <summary>
    /// The row as plain <c>iostat</c> prints it: tps, then throughput per second and the amounts
    /// over the interval (whole units, truncated, as sysstat's integer division) in <paramref name="unit"/>.
    /// </summary>
    public static string FormatBasic(IostatRow r, IostatUnit unit = IostatUnit.Kilobytes, int decimals = 2)
    {
        ArgumentNullException.ThrowIfNull(r);
        var format = "F" + decimals.ToString(CultureInfo.InvariantCulture);
        var per = Per(unit);
        string F(double value, int width) => value.ToString(format, CultureInfo.InvariantCulture).PadLeft(width);
        static string N(double value, int width) => Math.Floor(value).ToString("F0", CultureInfo.InvariantCulture).PadLeft(width);
        return string.Create(CultureInfo.InvariantCulture,
            $"{r.Device,-13} {F(r.TransfersPerSecond, 8)} {F(r.ReadKbPerSecond / per, 12)} {F(r.WriteKbPerSecond / per, 12)} {F(r.DiscardKbPerSecond / per, 12)} {N(r.KbRead / per, 10)} {N(r.KbWritten / per, 10)} {N(r.KbDiscarded / per, 10)}");
    }

    /// <summary>
    /// The row as <c>iostat -x -o JSON</c> writes it (sysstat's <c>write_json_ext_stat</c>): one
    /// object, its keys in sysstat's order, every value with 2 decimals.
    /// </summary>
    public static string JsonExtended(IostatRow r, IostatUnit unit = IostatUnit.Kilobytes)
    {
        ArgumentNullException.ThrowIfNull(r);
        var per = Per(unit);
        var u = UnitName(unit);
        var sb = new StringBuilder();
        sb.Append("{\"disk_device\": ").Append(IostatWriter.Json(r.Device));
        void F(string key, double value) => sb.Append(", \"").Append(key).Append("\": ").Append(value.ToString("F2", CultureInfo.InvariantCulture));
        F("r/s", r.ReadsPerSecond); F("w/s", r.WritesPerSecond); F("d/s", r.DiscardsPerSecond); F("f/s", r.FlushesPerSecond);
        F($"r{u}/s", r.ReadKbPerSecond / per); F($"w{u}/s", r.WriteKbPerSecond / per); F($"d{u}/s", r.DiscardKbPerSecond / per);
        F("rrqm/s", r.ReadMergesPerSecond); F("wrqm/s", r.WriteMergesPerSecond); F("drqm/s", r.DiscardMergesPerSecond);
        F("rrqm", r.ReadMergePercent); F("wrqm", r.WriteMergePercent); F("drqm", r.DiscardMergePercent);
        F("r_await", r.ReadAwait); F("w_await", r.WriteAwait); F("d_await", r.DiscardAwait); F("f_await", r.FlushAwait);
        F("rareq-sz", r.ReadRequestKb); F("wareq-sz", r.WriteRequestKb); F("dareq-sz", r.DiscardRequestKb);
        F("aqu-sz", r.QueueSize); F("util", r.Utilization);
        return sb.Append('}').ToString();
    }

    /// <summary>The row as <c>iostat -o JSON</c> writes it (sysstat's <c>write_json_basic_stat</c>): rates with 2 decimals, amounts as integers.</summary>
    public static string JsonBasic(IostatRow r, IostatUnit unit = IostatUnit.Kilobytes)
    {
        ArgumentNullException.ThrowIfNull(r);
        var per = Per(unit);
        var u = UnitName(unit);
        static string F(double value) => value.ToString("F2", CultureInfo.InvariantCulture);
        static string N(double value) => Math.Floor(value).ToString("F0", CultureInfo.InvariantCulture);
        return string.Create(CultureInfo.InvariantCulture,
            $"{{\"disk_device\": {IostatWriter.Json(r.Device)}, \"tps\": {F(r.TransfersPerSecond)}, \"{u}_read/s\": {F(r.ReadKbPerSecond / per)}, \"{u}_wrtn/s\": {F(r.WriteKbPerSecond / per)}, \"{u}_dscd/s\": {F(r.DiscardKbPerSecond / per)}, \"{u}_read\": {N(r.KbRead / per)}, \"{u}_wrtn\": {N(r.KbWritten / per)}, \"{u}_dscd\": {N(r.KbDiscarded / per)}}}");
    }

    private static double Per(IostatUnit unit) => unit == IostatUnit.Kilobytes ? 1.0 : 1024.0;

    private static string UnitName(IostatUnit unit) => unit == IostatUnit.Kilobytes ? "kB" : "MB";
}

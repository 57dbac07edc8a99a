using System.Globalization;
using System.Text;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Sysfs;

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
/// <param name="Await">await of <c>-xs</c>: delta read, write and discard ticks per delta read, write and discard I/O (ms).</param>
/// <param name="RequestKb">areq-sz of <c>-xs</c>: delta read, write and discard sectors per delta I/O over 2 (kB).</param>
internal sealed record IostatRow(
    string Device,
    double ReadsPerSecond, double ReadKbPerSecond, double ReadMergesPerSecond, double ReadMergePercent, double ReadAwait, double ReadRequestKb,
    double WritesPerSecond, double WriteKbPerSecond, double WriteMergesPerSecond, double WriteMergePercent, double WriteAwait, double WriteRequestKb,
    double DiscardsPerSecond, double DiscardKbPerSecond, double DiscardMergesPerSecond, double DiscardMergePercent, double DiscardAwait, double DiscardRequestKb,
    double FlushesPerSecond, double FlushAwait, double QueueSize, double Utilization,
    double KbRead, double KbWritten, double KbDiscarded,
    double Await = 0, double RequestKb = 0)
{
    /// <summary>tps: I/Os (reads, writes and discards) per second.</summary>
    public double TransfersPerSecond => ReadsPerSecond + WritesPerSecond + DiscardsPerSecond;

    /// <summary>kB/s of <c>-xs</c>: read, written and discarded.</summary>
    public double KbPerSecond => ReadKbPerSecond + WriteKbPerSecond + DiscardKbPerSecond;

    /// <summary>rqm/s of <c>-xs</c>: read, write and discard merges.</summary>
    public double MergesPerSecond => ReadMergesPerSecond + WriteMergesPerSecond + DiscardMergesPerSecond;

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
            rSectors / 2, wSectors / 2, dSectors / 2,
            Ratio(Delta(previous.ReadTicks, current.ReadTicks) + Delta(previous.WriteTicks, current.WriteTicks) + Delta(previous.DiscardTicks, current.DiscardTicks), rIos + wIos + dIos),
            Ratio(rSectors + wSectors + dSectors, rIos + wIos + dIos) / 2);
    }

    /// <summary>The header of the extended report in <paramref name="unit"/> (sysstat's <c>write_disk_stat_header</c>).</summary>
    public static string ExtendedHeaderFor(IostatUnit unit) => Header(extended: true, new IostatLayout(unit));

    /// <summary>The header of the basic report in <paramref name="unit"/>.</summary>
    public static string BasicHeaderFor(IostatUnit unit) => Header(extended: false, new IostatLayout(unit));

    /// <summary>
    /// The header of the device report as sysstat's <c>write_disk_stat_header</c> writes it:
    /// <c>Device</c> first, or last under <c>--pretty</c> (<c>-h</c>); the short columns under
    /// <c>-s</c>; of the extended report only <paramref name="part"/> (1 to 4: reads, writes,
    /// discards, the rest) when it is not 0, as <c>--pretty</c> breaks it.
    /// </summary>
    public static string Header(bool extended, IostatLayout layout, int part = 0)
    {
        ArgumentNullException.ThrowIfNull(layout);
        var u = UnitName(layout.Unit);
        var sb = new StringBuilder();
        if (!layout.Pretty)
        {
            sb.Append("Device       ");
        }

        if (extended && layout.Short)
        {
            sb.Append(CultureInfo.InvariantCulture, $"      tps      {u}/s    rqm/s   await  areq-sz  aqu-sz  %util");
        }
        else if (extended)
        {
            if (part is 0 or 1)
            {
                sb.Append(CultureInfo.InvariantCulture, $"     r/s     r{u}/s   rrqm/s  %rrqm r_await rareq-sz");
            }

            if (part is 0 or 2)
            {
                sb.Append(CultureInfo.InvariantCulture, $"     w/s     w{u}/s   wrqm/s  %wrqm w_await wareq-sz");
            }

            if (part is 0 or 3)
            {
                sb.Append(CultureInfo.InvariantCulture, $"     d/s     d{u}/s   drqm/s  %drqm d_await dareq-sz");
            }

            if (part is 0 or 4)
            {
                sb.Append("     f/s f_await  aqu-sz  %util");
            }
        }
        else if (layout.Short)
        {
            sb.Append(CultureInfo.InvariantCulture, $"      tps    {u}_read/s     {u}_w+d/s    {u}_read     {u}_w+d");
        }
        else
        {
            sb.Append(CultureInfo.InvariantCulture, $"      tps    {u}_read/s    {u}_wrtn/s    {u}_dscd/s    {u}_read    {u}_wrtn    {u}_dscd");
        }

        if (layout.Pretty)
        {
            sb.Append(" Device");
        }

        return sb.ToString();
    }

    /// <summary>
    /// The row as <c>iostat -x</c> prints it: the name in 13 columns, then each value with
    /// <paramref name="decimals"/> decimals (<c>--dec</c>) in sysstat's widths; throughput in
    /// <paramref name="unit"/>, request sizes in kB whatever the unit, as sysstat's.
    /// </summary>
    public static string FormatExtended(IostatRow r, IostatUnit unit = IostatUnit.Kilobytes, int decimals = 2) =>
        Format(r, extended: true, new IostatLayout(unit, decimals));

    /// <summary>
    /// The row as plain <c>iostat</c> prints it: tps, then throughput per second and the amounts
    /// over the interval (whole units, truncated, as sysstat's integer division) in <paramref name="unit"/>.
    /// </summary>
    public static string FormatBasic(IostatRow r, IostatUnit unit = IostatUnit.Kilobytes, int decimals = 2) =>
        Format(r, extended: false, new IostatLayout(unit, decimals));

    /// <summary>
    /// The row as sysstat's <c>write_plain_ext_stat</c> (<paramref name="extended"/>) or
    /// <c>write_plain_basic_stat</c> prints it in <paramref name="layout"/>: the name first in 13
    /// columns, or last after a space under <c>--pretty</c>; the short columns under <c>-s</c>
    /// (<c>-xs</c>: tps, throughput, merges, await, areq-sz, aqu-sz and %util of reads, writes and
    /// discards together; <c>-s</c>: writes and discards together); of the extended report only
    /// <paramref name="part"/> when it is not 0. Under <c>--human</c> throughput, request sizes and
    /// amounts are scaled to their unit (<c>k</c>, <c>M</c>, <c>G</c> ...: sysstat's
    /// <c>cprintf_unit</c>, one decimal, none with <c>--dec=0</c>, whatever <c>-k</c> or <c>-m</c>
    /// say) and percentages carry a <c>%</c> with one decimal less (<c>cprintf_xpc</c>).
    /// </summary>
    public static string Format(IostatRow r, bool extended, IostatLayout layout, int part = 0)
    {
        ArgumentNullException.ThrowIfNull(r);
        ArgumentNullException.ThrowIfNull(layout);
        var per = Per(layout.Unit);
        var format = "F" + layout.Decimals.ToString(CultureInfo.InvariantCulture);
        var sb = new StringBuilder();
        void F(double value, int width) => sb.Append(' ').Append(value.ToString(format, CultureInfo.InvariantCulture).PadLeft(width));
        void Rate(double kb, int width)
        {
            if (layout.Human)
            {
                Scaled(sb, kb, width, layout.Decimals);
            }
            else
            {
                F(kb / per, width);
            }
        }

        void Size(double kb, int width)
        {
            if (layout.Human)
            {
                Scaled(sb, kb, width, layout.Decimals);
            }
            else
            {
                F(kb, width);
            }
        }

        void Amount(double kb, int width)
        {
            if (layout.Human)
            {
                Scaled(sb, kb, width, layout.Decimals);
            }
            else
            {
                sb.Append(' ').Append(Math.Floor(kb / per).ToString("F0", CultureInfo.InvariantCulture).PadLeft(width));
            }
        }

        void P(double value, int width) => Percent(sb, value, width, layout.Decimals, layout.Human);

        if (!layout.Pretty)
        {
            sb.Append(CultureInfo.InvariantCulture, $"{r.Device,-13}");
        }

        if (extended && layout.Short)
        {
            F(r.TransfersPerSecond, 8); Rate(r.KbPerSecond, 9); F(r.MergesPerSecond, 8); F(r.Await, 7); Size(r.RequestKb, 8); F(r.QueueSize, 7); P(r.Utilization, 6);
        }
        else if (extended)
        {
            if (part is 0 or 1)
            {
                F(r.ReadsPerSecond, 7); Rate(r.ReadKbPerSecond, 9); F(r.ReadMergesPerSecond, 8); P(r.ReadMergePercent, 6); F(r.ReadAwait, 7); Size(r.ReadRequestKb, 8);
            }

            if (part is 0 or 2)
            {
                F(r.WritesPerSecond, 7); Rate(r.WriteKbPerSecond, 9); F(r.WriteMergesPerSecond, 8); P(r.WriteMergePercent, 6); F(r.WriteAwait, 7); Size(r.WriteRequestKb, 8);
            }

            if (part is 0 or 3)
            {
                F(r.DiscardsPerSecond, 7); Rate(r.DiscardKbPerSecond, 9); F(r.DiscardMergesPerSecond, 8); P(r.DiscardMergePercent, 6); F(r.DiscardAwait, 7); Size(r.DiscardRequestKb, 8);
            }

            if (part is 0 or 4)
            {
                F(r.FlushesPerSecond, 7); F(r.FlushAwait, 7); F(r.QueueSize, 7); P(r.Utilization, 6);
            }
        }
        else if (layout.Short)
        {
            F(r.TransfersPerSecond, 8); Rate(r.ReadKbPerSecond, 12); Rate(r.WriteKbPerSecond + r.DiscardKbPerSecond, 12);
            Amount(r.KbRead, 10); Amount(r.KbWritten + r.KbDiscarded, 10);
        }
        else
        {
            F(r.TransfersPerSecond, 8); Rate(r.ReadKbPerSecond, 12); Rate(r.WriteKbPerSecond, 12); Rate(r.DiscardKbPerSecond, 12);
            Amount(r.KbRead, 10); Amount(r.KbWritten, 10); Amount(r.KbDiscarded, 10);
        }

        if (layout.Pretty)
        {
            sb.Append(' ').Append(r.Device);
        }

        return sb.ToString();
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

    /// <summary>The row as <c>iostat -xs -o JSON</c> writes it (sysstat's <c>write_json_ext_stat</c> under <c>-s</c>).</summary>
    public static string JsonExtendedShort(IostatRow r, IostatUnit unit = IostatUnit.Kilobytes)
    {
        ArgumentNullException.ThrowIfNull(r);
        static string F(double value) => value.ToString("F2", CultureInfo.InvariantCulture);
        return string.Create(CultureInfo.InvariantCulture,
            $"{{\"disk_device\": {IostatWriter.Json(r.Device)}, \"tps\": {F(r.TransfersPerSecond)}, \"{UnitName(unit)}/s\": {F(r.KbPerSecond / Per(unit))}, \"rqm/s\": {F(r.MergesPerSecond)}, \"await\": {F(r.Await)}, \"areq-sz\": {F(r.RequestKb)}, \"aqu-sz\": {F(r.QueueSize)}, \"util\": {F(r.Utilization)}}}");
    }

    /// <summary>The row as <c>iostat -o JSON</c> writes it (sysstat's <c>write_json_basic_stat</c>, which <c>-s</c> does not change): rates with 2 decimals, amounts as integers.</summary>
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

    /// <summary>The header of the CPU report (sysstat's <c>write_plain_cpu_stat</c>).</summary>
    public const string CpuHeader = "avg-cpu:  %user   %nice %system %iowait  %steal   %idle";

    /// <summary>
    /// The CPU use between two readings of the <c>cpu</c> line of <c>/proc/stat</c>, as sysstat's
    /// iostat computes it (<c>rw_io_stat_loop</c>, <c>write_plain_cpu_stat</c>, common.c
    /// <c>ll_sp_value</c>): each mode's delta over the delta of the total, the total being user,
    /// nice, system, idle, iowait, irq, steal and softirq (not guest and guest_nice, which user and
    /// nice already count, so %user and %nice include guest time); %system includes irq and
    /// softirq; a mode whose counter went back reads 0; a total that did not move counts as 1 jiffy.
    /// </summary>
    public static IostatCpu ComputeCpu(CpuStatSample previous, CpuStatSample current)
    {
        static ulong Total(CpuStatSample s) => unchecked(s.User + s.Nice + s.System + s.Idle + s.Iowait + s.Irq + s.Steal + s.Softirq);
        var total = unchecked(Total(current) - Total(previous));
        total = total == 0 ? 1 : total;
        double Share(ulong before, ulong after) => after < before ? 0.0 : (double)(after - before) / total * 100;
        return new IostatCpu(
            Share(previous.User, current.User),
            Share(previous.Nice, current.Nice),
            Share(unchecked(previous.System + previous.Softirq + previous.Irq), unchecked(current.System + current.Softirq + current.Irq)),
            Share(previous.Iowait, current.Iowait),
            Share(previous.Steal, current.Steal),
            Share(previous.Idle, current.Idle));
    }

    /// <summary>
    /// The values line of the CPU report: 7 spaces, then the six percentages in 8 columns each
    /// with <paramref name="decimals"/> decimals, or under <paramref name="human"/> one decimal
    /// less and a <c>%</c> (sysstat's <c>cprintf_xpc</c>).
    /// </summary>
    public static string FormatCpu(IostatCpu cpu, int decimals = 2, bool human = false)
    {
        ArgumentNullException.ThrowIfNull(cpu);
        var sb = new StringBuilder("       ");
        foreach (var value in new[] { cpu.User, cpu.Nice, cpu.System, cpu.Iowait, cpu.Steal, cpu.Idle })
        {
            Percent(sb, value, 7, decimals, human);
        }

        return sb.ToString();
    }

    /// <summary>The CPU report as <c>iostat -o JSON</c> writes it (sysstat's <c>write_json_cpu_stat</c>, two spaces after the colon as there).</summary>
    public static string JsonCpu(IostatCpu cpu)
    {
        ArgumentNullException.ThrowIfNull(cpu);
        static string F(double value) => value.ToString("F2", CultureInfo.InvariantCulture);
        return $"\"avg-cpu\":  {{\"user\": {F(cpu.User)}, \"nice\": {F(cpu.Nice)}, \"system\": {F(cpu.System)}, \"iowait\": {F(cpu.Iowait)}, \"steal\": {F(cpu.Steal)}, \"idle\": {F(cpu.Idle)}}}";
    }

    // sysstat's cprintf_xpc: the value in WIDTH columns after a space; under --human one column and
    // one decimal (of 2) less for the '%' that follows.
    private static void Percent(StringBuilder sb, double value, int width, int decimals, bool human)
    {
        if (human)
        {
            width = Math.Max(width, 4) - 1;
            decimals = decimals > 1 ? decimals - 1 : decimals;
        }

        sb.Append(' ').Append(value.ToString("F" + decimals.ToString(CultureInfo.InvariantCulture), CultureInfo.InvariantCulture).PadLeft(width));
        if (human)
        {
            sb.Append('%');
        }
    }

    // sysstat's cprintf_unit: kilobytes scaled by 1024 while 1024 or more, one decimal (none with
    // --dec=0) in WIDTH - 1 columns after a space, then the unit's letter.
    private static void Scaled(StringBuilder sb, double kb, int width, int decimals)
    {
        const string Units = "sBkMGTP?";
        var unit = 2;
        while (kb >= 1024)
        {
            kb /= 1024;
            unit++;
        }

        sb.Append(' ').Append(kb.ToString(decimals == 0 ? "F0" : "F1", CultureInfo.InvariantCulture).PadLeft(Math.Max(width, 4) - 1)).Append(Units[Math.Min(unit, Units.Length - 1)]);
    }

    private static double Per(IostatUnit unit) => unit == IostatUnit.Kilobytes ? 1.0 : 1024.0;

    private static string UnitName(IostatUnit unit) => unit == IostatUnit.Kilobytes ? "kB" : "MB";
}

/// <summary>The CPU report of <c>actorblk iostat</c> (sysstat's <c>avg-cpu</c>): percentages of the node machine's CPU time over the interval.</summary>
/// <param name="User">%user (guest time included).</param>
/// <param name="Nice">%nice (guest_nice time included).</param>
/// <param name="System">%system (irq and softirq included).</param>
/// <param name="Iowait">%iowait.</param>
/// <param name="Steal">%steal.</param>
/// <param name="Idle">%idle.</param>
internal sealed record IostatCpu(double User, double Nice, double System, double Iowait, double Steal, double Idle);

/// <summary>How the tables are laid out.</summary>
/// <param name="Unit"><c>-k</c> or <c>-m</c>.</param>
/// <param name="Decimals"><c>--dec=N</c> (2 when not given).</param>
/// <param name="Short"><c>-s</c>: the short device report.</param>
/// <param name="Human"><c>--human</c> (and <c>-h</c>): values scaled to their unit, percentages with a <c>%</c>.</param>
/// <param name="Pretty"><c>--pretty</c> (and <c>-h</c>): the device name last; the extended report in four parts.</param>
internal sealed record IostatLayout(IostatUnit Unit = IostatUnit.Kilobytes, int Decimals = 2, bool Short = false, bool Human = false, bool Pretty = false);

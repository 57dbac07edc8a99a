using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Host.Commands;

namespace ActorBlk.Host.Bench;

/// <summary>
/// Writes a bench result the way fio does: its JSON layout (<c>jobs[0].read</c> and
/// <c>jobs[0].write</c> with <c>io_bytes</c>, <c>bw_bytes</c>, <c>iops</c>, <c>total_ios</c>,
/// <c>slat_ns</c>, <c>clat_ns</c>, <c>lat_ns</c> and their percentiles, and with json+ their
/// bins), plus an <c>actorblk</c> object; its terse line (versions 2 to 5); or its human-readable summary.
/// </summary>
/// <remarks>
/// Errors are counted apart, as fio does with <c>continue_on_error</c>: a failed I/O counts in its
/// direction's <c>total_ios</c>, <c>drop_ios</c> and <c>iops</c> (fio's IOPS is of
/// <c>total_io_u</c>, every I/O issued), never in <c>io_bytes</c>, <c>bw</c> or the latencies; the job's <c>error</c> and <c>first_error</c> are the errno of the
/// first failure in the window and <c>total_err</c> their number. <c>short_ios</c> stays 0: a
/// request completes whole or fails, it is never partly done.
/// </remarks>
internal static class BenchReport
{
    /// <summary>What the report gives as fio's version (the JSON's <c>fio version</c>, the terse line's second field).</summary>
    public const string Version = "actorblk-bench-1";

    /// <summary>The percentiles fio reports by default (fio 3.33 options.c <c>percentile_list</c>).</summary>
    public static readonly double[] Percentiles = [1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 99.5, 99.9, 99.95, 99.99];

    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    /// <summary>
    /// The report in every format of <paramref name="format"/>, in fio's order (stat.c
    /// <c>__show_run_stats</c> writes its terse, JSON and normal buffers in that order, whatever
    /// the order of <c>--output-format</c>): the terse line, the JSON document and a newline, the
    /// human summary.
    /// </summary>
    public static string Render(BenchResult r, OutputFormat format)
    {
        var sb = new StringBuilder();
        if ((format & OutputFormat.Terse) != 0)
        {
            sb.Append(Terse(r));
        }

        if ((format & OutputFormat.Json) != 0)
        {
            sb.Append(Json(r, plus: (format & OutputFormat.JsonPlus) != 0)).Append('\n');
        }

        if ((format & OutputFormat.Normal) != 0)
        {
            sb.Append(Human(r));
        }

        return sb.ToString();
    }

    /// <summary>
    /// fio's JSON report; with <paramref name="plus"/> fio's <c>json+</c>: every latency object
    /// that has percentiles (<c>clat_ns</c>, and <c>lat_ns</c> with <c>--lat_percentiles</c>) also
    /// has <c>bins</c>, fio's histogram (<see cref="LatencyRecorder.FioBins"/>), as stat.c
    /// <c>add_ddir_lat_json</c> writes it.
    /// </summary>
    public static string Json(BenchResult r, bool plus = false)
    {
        var engine = EngineSummary(r.Engines);
        var firstError = -r.FirstError.ToErrno();
        var totalErrors = r.Read.Failed + r.Write.Failed;
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            var now = DateTimeOffset.UtcNow;
            w.WriteStartObject();
            w.WriteString("fio version", Version);
            w.WriteNumber("timestamp", now.ToUnixTimeSeconds());
            w.WriteNumber("timestamp_ms", now.ToUnixTimeMilliseconds());
            // fio's ctime(3) form: "Thu Dec  3 14:45:47 2026".
            w.WriteString("time", $"{now.ToString("ddd MMM", Inv)} {now.Day,2} {now.ToString("HH:mm:ss yyyy", Inv)}");
            w.WriteStartObject("global options");
            WriteJobOptions(w, r.Options);
            w.WriteEndObject();

            w.WriteStartArray("jobs");
            w.WriteStartObject();
            w.WriteString("jobname", r.Options.Name);
            w.WriteNumber("groupid", 0);
            w.WriteNumber("error", firstError);
            w.WriteNumber("eta", 0);
            // fio's eta.c: elapsed_sec = (mtime_since_genesis() + 999) / 1000, whole seconds rounded up.
            w.WriteNumber("elapsed", ((long)r.Elapsed.TotalMilliseconds + 999) / 1000);
            w.WriteStartObject("job options");
            WriteJobOptions(w, r.Options);
            w.WriteEndObject();
            WriteOp(w, "read", r.Read, r.Measured, r.ReadSamples, r.Options.LatPercentiles, plus);
            WriteOp(w, "write", r.Write, r.Measured, r.WriteSamples, r.Options.LatPercentiles, plus);
            WriteOp(w, "trim", new OpStats(), r.Measured, [], r.Options.LatPercentiles, plus);
            WriteSync(w);
            w.WriteNumber("job_runtime", (long)r.Measured.TotalMilliseconds);
            w.WriteNumber("usr_cpu", Math.Round(r.UsrCpu, 6));
            w.WriteNumber("sys_cpu", Math.Round(r.SysCpu, 6));
            w.WriteNumber("ctx", r.Usage.ContextSwitches);
            w.WriteNumber("majf", r.Usage.MajorFaults);
            w.WriteNumber("minf", r.Usage.MinorFaults);
            WriteDepths(w, r.Options.IoDepth);
            WriteLatencyGroups(w, r);
            w.WriteNumber("total_err", totalErrors);
            w.WriteNumber("first_error", firstError);
            w.WriteEndObject();
            w.WriteEndArray();
            WriteDiskUtil(w, r.Disks);

            w.WriteStartObject("actorblk");
            w.WriteNumber("submitted", r.Submitted);
            w.WriteNumber("completed", r.Completed);
            w.WriteNumber("errors", r.Errors);
            w.WriteNumber("timeouts", r.Timeouts);
            w.WriteNumber("double_completions", r.DoubleCompletions);
            w.WriteNumber("jit_warmup_ms", (long)r.JitWarmup.TotalMilliseconds);
            w.WriteNumber("timeouts_expired", r.Supervision.TimeoutsExpired);
            w.WriteNumber("device_errors", r.Supervision.DeviceErrors);
            w.WriteNumber("resets", r.Supervision.Resets);
            if (r.Supervision.Faults is { } f)
            {
                w.WriteStartObject("faults_injected");
                w.WriteNumber("errors", f.Errors);
                w.WriteNumber("resource", f.Resource);
                w.WriteNumber("lost", f.Lost);
                w.WriteNumber("stalls", f.Stalls);
                w.WriteNumber("crashes", f.Crashes);
                w.WriteEndObject();
            }

            if (r.Hotplug is { } h)
            {
                w.WriteStartObject("hotplug");
                w.WriteNumber("interval_ms", h.IntervalMs);
                w.WriteNumber("events", h.Events);
                w.WriteNumber("remaps", h.Remaps);
                w.WriteNumber("topology_version", h.TopologyVersion);
                w.WriteNumber("max_event_ms", Math.Round(h.MaxEventMs, 3));
                w.WriteEndObject();
            }

            if (r.Cluster is { } c)
            {
                w.WriteStartObject("cluster");
                w.WriteString("device", c.Device);
                w.WriteString("owner", c.Owner);
                w.WriteBoolean("remote", c.Remote);
                w.WriteString("nbd", c.NbdEndpoint);
                w.WriteString("local_queue", c.LocalQueue);
                w.WriteEndObject();
            }

            w.WriteBoolean("shared_tags", r.Options.SharedTags);
            w.WriteBoolean("tag_fairness", r.Options.TagFairness);
            w.WriteStartArray("devices");
            foreach (var d in r.Devices)
            {
                w.WriteStartObject();
                w.WriteString("name", d.Name);
                w.WriteNumber("iops", Math.Round(d.Iops, 3));
                if (d.PeakInflight is { } peak)
                {
                    w.WriteNumber("peak_inflight", peak);
                }
                else
                {
                    w.WriteNull("peak_inflight");
                }

                w.WriteNumber("went_idle", d.WentIdle);
                w.WriteString("dispatch", d.Dispatch.ToString().ToLowerInvariant());
                WriteEngines(w, d.Engines);

                w.WriteEndObject();
            }

            w.WriteEndArray();
            w.WriteString("dispatch", r.Dispatch);
            w.WriteString("engine", engine);
            WriteEngines(w, r.Engines);
            w.WriteString("clocksource", TimestampClock.Source == TimestampSource.Tsc ? "tsc" : "monotonic");
            w.WriteString("device", r.DeviceDescription);
            w.WriteEndObject();
            w.WriteEndObject();
        }

        return Encoding.UTF8.GetString(stream.ToArray());
    }

    public static string Human(BenchResult r)
    {
        var engine = EngineSummary(r.Engines);
        var firstError = -r.FirstError.ToErrno();
        // fio's i2p (stat.c): with kb_base=1024 binary units first, with 1000 decimal ones.
        var kbBase = r.Options.KbBase;
        var i2p = kbBase == 1024;
        var sb = new StringBuilder();
        sb.Append(Inv, $"{r.Options.Name}: (groupid=0, jobs={r.Options.NumJobs}): err={firstError,2}: rw={r.Options.PatternName}, bs={Sizes.Format(r.Options.BlockSize)}, iodepth={r.Options.IoDepth}, dispatch={r.Dispatch}, engine={engine}\n");
        if (r.Cluster is { } c)
        {
            sb.Append(Inv, $"  cluster: {c.Device} owned by {c.Owner}, {(c.Remote ? $"remote over {c.NbdEndpoint} as local queue {c.LocalQueue}" : "local")}\n");
        }

        foreach (var (name, stats, samples) in new[] { ("read", r.Read, r.ReadSamples), ("write", r.Write, r.WriteSamples) })
        {
            if (stats.Ios == 0)
            {
                continue;
            }

            // fio's show_ddir_status: bytes and every I/O issued (total_io_u, failed ones too) over
            // the runtime in whole ms, in integers.
            var runtime = RuntimeMs(stats, r.Measured);
            var bw = BandwidthBytes(stats, runtime);
            // fio (3.9 on) ends the write line with its zone resets (stat.c show_ddir_status,
            // zbd_write_status), for any device: the bench resets no zone.
            sb.Append(Inv, $"  {name}: IOPS={Count(WholeIopsOf(stats, runtime))}, BW={Rate(bw, pow2: i2p)} ({Rate(bw, pow2: !i2p)})({Bytes(stats.Bytes, pow2: i2p)}/{runtime}msec){(name == "write" ? "; 0 zone resets" : string.Empty)}\n");
            // fio's show_ddir_status: clat and lat lines (no slat line without slat samples, as
            // fio's calc_lat finds none), then the percentiles of clat, fio's default (the JSON's
            // clat_ns). Without a separate submission latency both lines hold the same figures.
            Line(sb, "    clat", stats.Total);
            Line(sb, "     lat", stats.Total);
            PercentileLines(sb, "clat", stats.Total);
            if (r.Options.LatPercentiles)
            {
                // fio's show_ddir_status prints the lat table after the clat one (stat.c).
                PercentileLines(sb, "lat", stats.Total);
            }

            // fio's per-interval lines (the JSON's bw_* and iops_*), from the 500 ms samples.
            if (samples.Count > 0)
            {
                var rate = SampleStats.Of([.. samples.Select(x => x.KiBPerSecond)]);
                var iops = SampleStats.Of([.. samples.Select(x => x.Iops)]);
                // fio's show_ddir_status: the samples (KiB/s whatever the base) under "KiB/s", or
                // "kB/s" with kb_base=1000, and once the mean passes kb_base^2 divided by kb_base
                // under "MiB/s" (fio's label for either base).
                var mib = rate.Mean > (double)kbBase * kbBase;
                var scale = mib ? kbBase : 1.0;
                var share = PercentOfAggregate(rate.Mean, stats.Bytes, r.Measured);
                sb.Append(Inv, $"   bw ({(mib ? "MiB" : i2p ? "KiB" : "kB"),5}/s): min={(ulong)(rate.Min / scale),5}, max={(ulong)(rate.Max / scale),5}, per={share:0.00}%, avg={rate.Mean / scale,5:0.00}, stdev={rate.StdDev / scale,5:0.00}, samples={rate.Count}\n");
                sb.Append(Inv, $"   iops        : min={(ulong)iops.Min,5}, max={(ulong)iops.Max,5}, avg={iops.Mean,5:0.00}, stdev={iops.StdDev,5:0.00}, samples={iops.Count}\n");
            }
        }

        // fio's lines: the latency groups that hold any I/O, five to a line.
        foreach (var (name, groups) in LatencyGroups(AllLatencies(r), AllIos(r)))
        {
            var shown = groups.Where(g => g.Percent > 0).ToList();
            for (var i = 0; i < shown.Count; i += 5)
            {
                sb.Append(Inv, $"  lat ({name[8..].Replace("us", "usec", StringComparison.Ordinal).Replace("ns", "nsec", StringComparison.Ordinal).Replace("ms", "msec", StringComparison.Ordinal)})   : ");
                sb.AppendJoin(", ", shown.Skip(i).Take(5).Select(g => string.Create(Inv, $"{g.Key}={g.Percent:0.00}%")));
                sb.Append('\n');
            }
        }

        sb.Append(Inv, $"  cpu          : usr={r.UsrCpu:0.00}%, sys={r.SysCpu:0.00}%, ctx={r.Usage.ContextSwitches}, majf={r.Usage.MajorFaults}, minf={r.Usage.MinorFaults}\n");
        var depthGroup = DepthGroup(r.Options.IoDepth);
        sb.Append("  IO depths    : ").AppendJoin(", ", new[] { "1", "2", "4", "8", "16", "32", ">=64" }.Select(k => $"{k}={(k == depthGroup ? "100.0" : "0.0")}%")).Append('\n');
        sb.Append(Inv, $"     issued rwts: total={r.Read.TotalIos},{r.Write.TotalIos},0,0 short=0,0,0,0 dropped={r.Read.Failed},{r.Write.Failed},0,0\n");
        if (r.Read.Failed + r.Write.Failed > 0)
        {
            sb.Append(Inv, $"     errors    : total={r.Read.Failed + r.Write.Failed}, first_error={firstError}/<{Marshal.GetPInvokeErrorMessage(firstError)}>\n");
        }

        // fio 3.33 stat.c show_thread_status_normal: "latency   : target=%llu, window=%llu,
        // percentile=%.2f%%, depth=%u" whenever latency_depth is set, which is always (the
        // iodepth); no latency target: 0, 0, 100.00% as the JSON's latency_* keys.
        sb.Append(Inv, $"     latency   : target=0, window=0, percentile=100.00%, depth={r.Options.IoDepth}\n");

        sb.Append(Inv, $"  engines      : {string.Join(",", r.Engines.Select(e => e ?? "-"))} (per hardware queue; - never dispatched)\n");
        sb.Append(Inv, $"  actorblk     : submitted={r.Submitted}, completed={r.Completed}, errors={r.Errors}, timeouts={r.Timeouts}\n");
        var sup = r.Supervision;
        if (sup.TimeoutsExpired > 0 || sup.Resets > 0 || sup.DeviceErrors > 0 || sup.Faults is not null)
        {
            sb.Append(Inv, $"  supervision  : timeouts expired={sup.TimeoutsExpired}, device errors={sup.DeviceErrors}, resets={sup.Resets}\n");
        }

        if (sup.Faults is { } f)
        {
            sb.Append(Inv, $"  faults       : errors={f.Errors}, resource={f.Resource}, lost={f.Lost}, stalls={f.Stalls}, crashes={f.Crashes}\n");
        }

        if (r.Hotplug is { } h)
        {
            sb.Append(Inv, $"  hotplug      : every {h.IntervalMs} ms: events={h.Events}, remaps={h.Remaps}, topology version={h.TopologyVersion}, longest event={h.MaxEventMs:0.###} ms\n");
        }

        if (r.Devices.Count > 1)
        {
            foreach (var d in r.Devices)
            {
                sb.Append(Inv, $"  {d.Name,-12} : IOPS={Count(d.Iops)}{(d.PeakInflight is { } p ? $", peak in flight={p}, went idle={d.WentIdle}" : string.Empty)}\n");
            }
        }
        sb.Append(Inv, $"  device       : {r.DeviceDescription}\n\nRun status group 0 (all jobs):\n");
        foreach (var (name, stats) in new[] { ("READ", r.Read), ("WRITE", r.Write) })
        {
            if (stats.Ios > 0)
            {
                // fio's rs->agg: the bytes times 1000 over the runtime in whole ms. Then its
                // min_bw-max_bw and min_run-max_run over the group's thread stats: with
                // group_reporting (the bench's, always on) the jobs are summed into one (stat.c
                // sum_thread_stats: io_bytes added, runtime the longest), so both ends are the
                // aggregate and the runtime: 151MiB/s-151MiB/s, run=103-103msec for two jobs.
                var runtime = RuntimeMs(stats, r.Measured);
                var bw = BandwidthBytes(stats, runtime);
                var (rate, alt) = (Rate(bw, pow2: i2p), Rate(bw, pow2: !i2p));
                sb.Append(Inv, $"  {name,5}: bw={rate} ({alt}), {rate}-{rate} ({alt}-{alt}), io={Bytes(stats.Bytes, pow2: i2p)} ({Bytes(stats.Bytes, pow2: !i2p)}), run={runtime}-{runtime}msec\n");
            }
        }

        // fio's show_disk_util after the group's lines, when the job's file lies on a disk.
        if (r.Disks.Count > 0)
        {
            sb.Append("\nDisk stats (read/write):\n");
            foreach (var disk in r.Disks)
            {
                DiskLine(sb, disk, terse: false);
            }
        }

        return sb.ToString();
    }

    /// <summary>
    /// fio 3.33's line of a disk (stat.c <c>print_disk_util</c> and <c>show_agg_stats</c>): in the
    /// normal report <c>  vda: ios=R/W, merge=R/W, ticks=R/W, in_queue=N, util=U%</c> (indented
    /// two more, and followed by the slaves' <c>aggrios=</c> ... <c>aggrutil=</c>, for a disk with
    /// slaves), on the terse line <c>;vda;R;W;R;W;R;W;N;U%</c> (and <c>;slaves;</c> ...); util with
    /// <c>%3.2f</c>, the slaves' figures their sums over their number.
    /// </summary>
    internal static void DiskLine(StringBuilder sb, DiskUtil disk, bool terse)
    {
        var s = disk.Stats;
        var agg = disk.Aggregate;
        if (terse)
        {
            sb.Append(Inv, $";{disk.Name};{s.ReadIos};{s.WriteIos};{s.ReadMerges};{s.WriteMerges};{s.ReadTicks};{s.WriteTicks};{s.TimeInQueue};{CFixed(s.Util, 2)}%");
            if (agg is { } a)
            {
                sb.Append(Inv, $";slaves;{a.ReadIos};{a.WriteIos};{a.ReadMerges};{a.WriteMerges};{a.ReadTicks};{a.WriteTicks};{a.TimeInQueue};{CFixed(a.MaxUtil, 2)}%");
            }

            return;
        }

        sb.Append(agg is null ? "  " : "    ");
        sb.Append(Inv, $"{disk.Name}: ios={s.ReadIos}/{s.WriteIos}, merge={s.ReadMerges}/{s.WriteMerges}, ticks={s.ReadTicks}/{s.WriteTicks}, in_queue={s.TimeInQueue}, util={CFixed(s.Util, 2)}%");
        if (agg is { } g)
        {
            sb.Append(Inv, $", aggrios={g.ReadIos}/{g.WriteIos}, aggrmerge={g.ReadMerges}/{g.WriteMerges}, aggrticks={g.ReadTicks}/{g.WriteTicks}, aggrin_queue={g.TimeInQueue}, aggrutil={CFixed(g.MaxUtil, 2)}%");
        }

        sb.Append('\n');
    }

    // fio 3.33 stat.c json_object_add_disk_utils: "disk_util" after "jobs", one object a disk
    // (util as fio's json.c prints a float, "%f"); no key without a disk.
    private static void WriteDiskUtil(Utf8JsonWriter w, IReadOnlyList<DiskUtil> disks)
    {
        if (disks.Count == 0)
        {
            return;
        }

        w.WriteStartArray("disk_util");
        foreach (var disk in disks)
        {
            var s = disk.Stats;
            w.WriteStartObject();
            w.WriteString("name", disk.Name);
            w.WriteNumber("read_ios", s.ReadIos);
            w.WriteNumber("write_ios", s.WriteIos);
            w.WriteNumber("read_merges", s.ReadMerges);
            w.WriteNumber("write_merges", s.WriteMerges);
            w.WriteNumber("read_ticks", s.ReadTicks);
            w.WriteNumber("write_ticks", s.WriteTicks);
            w.WriteNumber("in_queue", s.TimeInQueue);
            w.WritePropertyName("util");
            w.WriteRawValue(CFixed(s.Util, 6));
            if (disk.Aggregate is { } a)
            {
                // fio's keys, "aggr_write_merge" without its s included.
                w.WriteNumber("aggr_read_ios", a.ReadIos);
                w.WriteNumber("aggr_write_ios", a.WriteIos);
                w.WriteNumber("aggr_read_merges", a.ReadMerges);
                w.WriteNumber("aggr_write_merge", a.WriteMerges);
                w.WriteNumber("aggr_read_ticks", a.ReadTicks);
                w.WriteNumber("aggr_write_ticks", a.WriteTicks);
                w.WriteNumber("aggr_in_queue", a.TimeInQueue);
                w.WritePropertyName("aggr_util");
                w.WriteRawValue(CFixed(a.MaxUtil, 6));
            }

            w.WriteEndObject();
        }

        w.WriteEndArray();
    }

    /// <summary>
    /// fio's terse line, of the version <see cref="BenchOptions.TerseVersion"/> gives (3 by
    /// default; fio 3.33 stat.c <c>show_thread_status_terse_all</c>; HOWTO "Terse output"):
    /// version, fio version (not in version 2), job name, group, error; per direction, read then
    /// write, then trim in versions 2, 4 and 5 (no trim in version 3), the KiB moved, bandwidth in KiB/s, IOPS and runtime in ms,
    /// submission, completion and total latency in microseconds (min and max whole, mean and
    /// deviation to six places), fio's 20 percentile slots (the 17 default percentiles in
    /// microseconds, then <c>0%=0</c>), the bandwidth samples (min, max, share of the aggregate,
    /// mean, deviation); then the CPU figures, the 7 depth groups, the 10 microsecond latency
    /// groups (the nanosecond ones added into the first, as fio keeps the line's layout) and the 12
    /// millisecond ones (version 5 adds, to each direction after its bandwidth samples, their
    /// count and the IOPS samples' min, max, mean, deviation and count); the total error count and the first error when any I/O failed (fio's
    /// <c>continue_on_error</c> fields, which the normal report's <c>errors</c> line matches).
    /// The figures are the JSON's; fio's integer arithmetic and C's <c>%f</c> rounding are kept.
    /// There is no submission latency (fio's zero fields), and a direction that moved no bytes
    /// has runtime 0, as fio counts a direction's runtime only when it moved bytes (backend.c).
    /// fio's disk utilisation fields follow the latency groups (versions 3 to 5), for each disk a
    /// file device lies on (<see cref="DiskLine"/>); none for the null device or an NBD export.
    /// </summary>
    public static string Terse(BenchResult r)
    {
        var version = r.Options.TerseVersion;
        if (version is < 2 or > 5)
        {
            throw new ArgumentOutOfRangeException(nameof(r), version, "fio's terse versions are 2, 3, 4 and 5.");
        }

        var firstError = -r.FirstError.ToErrno();
        var sb = new StringBuilder();
        if (version == 2)
        {
            sb.Append(Inv, $"2;{r.Options.Name};0;{firstError}");
        }
        else
        {
            sb.Append(Inv, $"{version};{Version};{r.Options.Name};0;{firstError}");
        }

        TerseDirection(sb, r, r.Read, r.ReadSamples, version);
        TerseDirection(sb, r, r.Write, r.WriteSamples, version);
        if (version != 3)
        {
            TerseDirection(sb, r, new OpStats(), [], version); // trim: none
        }

        sb.Append(Inv, $";{CFixed(r.UsrCpu, 6)}%;{CFixed(r.SysCpu, 6)}%;{r.Usage.ContextSwitches};{r.Usage.MajorFaults};{r.Usage.MinorFaults}");

        // The depth groups as the JSON's iodepth_level (fio's "%3.1f%%").
        var depthGroup = DepthGroup(r.Options.IoDepth);
        foreach (var key in DepthKeys)
        {
            sb.Append(key == depthGroup ? ";100.0%" : ";0.0%");
        }

        // fio's stat_calc_lat_nu: the microsecond shares (each at least 0.01% when it holds any
        // I/O), the first plus the unrounded share of every nanosecond group.
        var all = AllLatencies(r);
        var total = AllIos(r);
        var groups = LatencyGroups(all, total);
        var nanoseconds = all.Groups(LatencyBounds).Take(LatencyGroupNames[0].Keys.Length).Sum();
        var us = groups["latency_us"];
        for (var i = 0; i < us.Count; i++)
        {
            var percent = us[i].Percent + (i == 0 ? 100.0 * nanoseconds / Math.Max(total, 1) : 0);
            sb.Append(';').Append(CFixed(percent, 2)).Append('%');
        }

        foreach (var (_, percent) in groups["latency_ms"])
        {
            sb.Append(';').Append(CFixed(percent, 2)).Append('%');
        }

        // fio's disk fields (versions 3 to 5), before continue_on_error's.
        if (version >= 3)
        {
            foreach (var disk in r.Disks)
            {
                DiskLine(sb, disk, terse: true);
            }
        }

        var failed = r.Read.Failed + r.Write.Failed;
        if (failed > 0)
        {
            sb.Append(Inv, $";{failed};{firstError}");
        }

        return sb.Append('\n').ToString();
    }

    // fio's show_ddir_status_terse for one direction: version 5 adds the sample counts and the
    // IOPS samples after the bandwidth samples.
    private static void TerseDirection(StringBuilder sb, BenchResult r, OpStats s, IReadOnlyList<RateSample> samples, int version)
    {
        // fio's show_ddir_status_terse: bytes and every I/O issued (total_io_u) over the runtime in whole ms.
        var runtime = RuntimeMs(s, r.Measured);
        var bw = BandwidthBytes(s, runtime) / 1024;
        var iops = WholeIopsOf(s, runtime);

        sb.Append(Inv, $";{s.Bytes >> 10};{bw};{iops};{runtime}");
        sb.Append(";0;0;0.000000;0.000000"); // slat: none
        TerseLatency(sb, s.Total);           // clat

        // fio's FIO_IO_U_LIST_MAX_LEN slots: the percentiles, then "0%=0". Without samples fio's
        // calc_clat_percentiles gives 0 for each.
        var values = s.Total.FioPercentiles(Percentiles);
        for (var i = 0; i < 20; i++)
        {
            if (i >= Percentiles.Length)
            {
                sb.Append(";0%=0");
                continue;
            }

            sb.Append(';').Append(CFixed(Percentiles[i], 6)).Append(Inv, $"%={values[i] / 1000}");
        }

        TerseLatency(sb, s.Total); // lat: the same measurement

        var rate = SampleStats.Of([.. samples.Select(x => x.KiBPerSecond)]);
        TerseBandwidth(sb, s, runtime, rate);
        if (version == 5)
        {
            // fio's "%lu" of the bandwidth samples (0 without), then the IOPS samples as calc_lat gives them.
            var ioRate = SampleStats.Of([.. samples.Select(x => x.Iops)]);
            sb.Append(Inv, $";{rate.Count}");
            sb.Append(ioRate.Count == 0
                ? ";0;0;0.000000;0.000000;0"
                : string.Create(Inv, $";{(long)ioRate.Min};{(long)ioRate.Max};{CFixed(ioRate.Mean, 6)};{CFixed(ioRate.StdDev, 6)};{ioRate.Count}"));
        }
    }

    // The bandwidth samples of a direction: min, max, share of the aggregate, mean, deviation.
    private static void TerseBandwidth(StringBuilder sb, OpStats s, long runtime, SampleStats rate)
    {
        if (rate.Count == 0)
        {
            sb.Append(";0;0;0.000000%;0.000000;0.000000");
            return;
        }

        // The share of the group's aggregate (rs->agg, bytes per second over the runtime in ms),
        // as the terse line computes it: the mean unrounded, the aggregate in whole KiB/s.
        var share = 100.0;
        var aggregate = runtime > 0 ? (ulong)s.Bytes * 1000UL / (ulong)runtime : 0;
        if (aggregate != 0)
        {
            share = rate.Mean * 100 / (double)(aggregate / 1024);
            if (share > 100.0)
            {
                share = 100.0;
            }
        }

        sb.Append(Inv, $";{(long)rate.Min};{(long)rate.Max};{CFixed(share, 6)}%;{CFixed(rate.Mean, 6)};{CFixed(rate.StdDev, 6)}");
    }

    /// <summary>
    /// fio's <c>runtime</c> of a direction, in milliseconds: the measured window's
    /// (<see cref="WindowMs"/>) when the direction moved bytes, 0 when it moved none. fio adds a
    /// job's elapsed time to a direction's runtime only for a direction that moved bytes
    /// (backend.c: <c>update_runtime</c> under <c>td_read(td) &amp;&amp; td-&gt;io_bytes[DDIR_READ]</c>,
    /// and likewise in stat.c <c>__show_running_run_stats</c>), so a randread's write, or a
    /// direction whose every I/O failed, has runtime 0.
    /// </summary>
    internal static long RuntimeMs(OpStats s, TimeSpan measured) => s.Bytes > 0 ? WindowMs(measured) : 0;

    /// <summary>
    /// The measured window in fio's whole milliseconds, rounded up: backend.c <c>update_runtime</c>
    /// adds <c>(elapsed_us + 999) / 1000</c>, the elapsed time in whole microseconds
    /// (<c>utime_since</c>, truncated) rounded up to the millisecond. So a window of 2,000.0009 ms
    /// is 2,000 ms, one of 2,000.001 ms is 2,001, and one under 1 ms that moved bytes is 1 ms,
    /// never 0 (the bench truncated: 2,000 and 0).
    /// </summary>
    internal static long WindowMs(TimeSpan measured)
    {
        var us = Math.Max(0, measured.Ticks / TimeSpan.TicksPerMicrosecond);
        return (us + 999) / 1000;
    }

    // fio's bandwidth of a direction (stat.c: (1000 * io_bytes) / runt), bytes per second,
    // integer division over the runtime in whole ms; 0 without a runtime.
    private static long BandwidthBytes(OpStats s, long runtimeMs) => runtimeMs > 0 ? (long)((ulong)s.Bytes * 1000UL / (ulong)runtimeMs) : 0;

    // fio's IOPS of a direction: every I/O issued (total_io_u, which td_io_queue counts for each
    // I/O it queues, failed ones too; the bench's TotalIos, the JSON's total_ios) times 1000 over
    // the runtime in whole ms. The JSON's iops is a double (1000.0 * total_io_u / runt).
    private static double IopsOf(OpStats s, long runtimeMs) => runtimeMs > 0 ? 1000.0 * s.TotalIos / runtimeMs : 0;

    // The normal and terse reports' IOPS: fio's integer (1000 * total_io_u) / runt.
    private static long WholeIopsOf(OpStats s, long runtimeMs) => runtimeMs > 0 ? (long)((ulong)s.TotalIos * 1000UL / (ulong)runtimeMs) : 0;

    // min, max, mean and deviation in microseconds: fio's "%llu;%llu;%f;%f" of the nanoseconds / 1000.
    private static void TerseLatency(StringBuilder sb, LatencyRecorder l)
    {
        if (l.Count == 0)
        {
            sb.Append(";0;0;0.000000;0.000000");
            return;
        }

        sb.Append(Inv, $";{l.Min / 1000};{l.Max / 1000};{CFixed(l.Mean / 1000, 6)};{CFixed(l.StdDev / 1000, 6)}");
    }

    /// <summary>
    /// C's <c>printf("%.Nf")</c> of <paramref name="value"/> as glibc writes it: the exact binary
    /// value rounded to <paramref name="decimals"/> places, a tie to even (<c>0.125</c> is
    /// <c>0.12</c>, where .NET's <c>F2</c> gives <c>0.13</c>); <c>-nan</c>, <c>nan</c>,
    /// <c>inf</c> and <c>-inf</c> as glibc spells them.
    /// </summary>
    internal static string CFixed(double value, int decimals)
    {
        if (double.IsNaN(value))
        {
            return BitConverter.DoubleToInt64Bits(value) < 0 ? "-nan" : "nan";
        }

        if (double.IsInfinity(value))
        {
            return value < 0 ? "-inf" : "inf";
        }

        var bits = BitConverter.DoubleToInt64Bits(value);
        var negative = bits < 0;
        var exponent = (int)((bits >> 52) & 0x7FF);
        var mantissa = bits & 0xF_FFFF_FFFF_FFFFL;
        if (exponent == 0)
        {
            exponent = 1; // subnormal
        }
        else
        {
            mantissa |= 1L << 52;
        }

        // |value| = mantissa * 2^(exponent - 1075); scaled by 10^decimals and rounded half to even.
        var shift = exponent - 1075;
        var scaled = new System.Numerics.BigInteger(mantissa) * System.Numerics.BigInteger.Pow(10, decimals);
        System.Numerics.BigInteger digits;
        if (shift >= 0)
        {
            digits = scaled << shift;
        }
        else
        {
            var denominator = System.Numerics.BigInteger.One << -shift;
            digits = System.Numerics.BigInteger.DivRem(scaled, denominator, out var remainder);
            var twice = remainder * 2;
            if (twice > denominator || (twice == denominator && !digits.IsEven))
            {
                digits += 1;
            }
        }

        var text = digits.ToString(Inv).PadLeft(decimals + 1, '0');
        var whole = text[..^decimals];
        var result = decimals == 0 ? text : $"{whole}.{text[^decimals..]}";
        return negative ? "-" + result : result;
    }

    private static void WriteJobOptions(Utf8JsonWriter w, BenchOptions o)
    {
        w.WriteString("rw", o.PatternName);
        w.WriteString("bs", o.BlockSize.ToString(Inv));
        w.WriteString("size", o.Size.ToString(Inv));

        // As fio echoes them (its job options are the options given, in their text): only when given.
        if (o.OffsetTexts.Offset is { } offset)
        {
            w.WriteString("offset", offset);
        }

        if (o.OffsetTexts.OffsetIncrement is { } increment)
        {
            w.WriteString("offset_increment", increment);
        }

        w.WriteString("iodepth", o.IoDepth.ToString(Inv));
        w.WriteString("numjobs", o.NumJobs.ToString(Inv));
        if (o.IsMixed)
        {
            w.WriteString("rwmixread", o.RwMixRead.ToString(Inv));
        }

        if (o.Runtime is { } runtime)
        {
            // As given: fio echoes the option's text, and 1500ms is not "1".
            w.WriteString("runtime", runtime.TotalSeconds == Math.Floor(runtime.TotalSeconds)
                ? ((long)runtime.TotalSeconds).ToString(Inv)
                : $"{(long)runtime.TotalMilliseconds}ms");
        }

        w.WriteString("ramp_time", ((long)o.RampTime.TotalSeconds).ToString(Inv));
        w.WriteString("direct", o.Direct ? "1" : "0");
        w.WriteString("device", o.Device);
    }

    private static void WriteOp(Utf8JsonWriter w, string name, OpStats s, TimeSpan measured, IReadOnlyList<RateSample> samples, bool latPercentiles, bool plus)
    {
        // fio's add_ddir_status_json: bw_bytes = (1000 * io_bytes) / runt, bw = bw_bytes / 1024,
        // iops = (1000.0 * total_io_u) / runt, over the runtime in whole ms; 0 without one.
        var runtime = RuntimeMs(s, measured);
        var bwBytes = BandwidthBytes(s, runtime);
        w.WriteStartObject(name);
        w.WriteNumber("io_bytes", s.Bytes);
        w.WriteNumber("io_kbytes", s.Bytes / 1024);
        w.WriteNumber("bw_bytes", bwBytes);
        w.WriteNumber("bw", bwBytes / 1024);
        // Always with a fraction, as fio writes it (a whole number would read as an integer).
        w.WritePropertyName("iops");
        w.WriteRawValue(IopsOf(s, runtime).ToString("F6", Inv));
        w.WriteNumber("runtime", runtime);
        w.WriteNumber("total_ios", s.TotalIos);
        w.WriteNumber("short_ios", 0);
        w.WriteNumber("drop_ios", s.Failed);
        // Like fio with disable_slat: no separate submission latency, so clat is the whole latency.
        // Percentiles as fio's defaults put them (fio 3.33 options.c: clat_percentiles=1,
        // lat_percentiles=0; stat.c add_ddir_status_json passes each flag to add_ddir_lat_json):
        // under clat_ns, and under lat_ns too with --lat_percentiles.
        // json+ adds bins where there are percentiles (stat.c add_ddir_lat_json).
        WriteLatency(w, "slat_ns", new LatencyRecorder(), percentiles: false);
        WriteLatency(w, "clat_ns", s.Total, percentiles: true, plus);
        WriteLatency(w, "lat_ns", s.Total, percentiles: latPercentiles, plus);

        // fio's per-interval samples (500 ms): bandwidth in KiB/s, bw_agg the share of the group
        // (0 without samples, as fio's add_ddir_status_json).
        var bw = SampleStats.Of([.. samples.Select(x => x.KiBPerSecond)]);
        var iops = SampleStats.Of([.. samples.Select(x => x.Iops)]);
        w.WriteNumber("bw_min", (long)bw.Min);
        w.WriteNumber("bw_max", (long)bw.Max);
        w.WritePropertyName("bw_agg");
        w.WriteRawValue((bw.Count > 0 ? PercentOfAggregate(bw.Mean, s.Bytes, measured) : 0.0).ToString("F6", Inv));
        w.WritePropertyName("bw_mean");
        w.WriteRawValue(bw.Mean.ToString("F6", Inv));
        w.WritePropertyName("bw_dev");
        w.WriteRawValue(bw.StdDev.ToString("F6", Inv));
        w.WriteNumber("bw_samples", bw.Count);
        w.WriteNumber("iops_min", (long)iops.Min);
        w.WriteNumber("iops_max", (long)iops.Max);
        w.WritePropertyName("iops_mean");
        w.WriteRawValue(iops.Mean.ToString("F6", Inv));
        w.WritePropertyName("iops_stddev");
        w.WriteRawValue(iops.StdDev.ToString("F6", Inv));
        w.WriteNumber("iops_samples", iops.Count);
        w.WriteEndObject();
    }

    // fio's latency groups (stat.c): ns, us and ms, each bound the top of its group.
    private static readonly (string Name, string[] Keys, long Scale)[] LatencyGroupNames =
    [
        ("latency_ns", ["2", "4", "10", "20", "50", "100", "250", "500", "750", "1000"], 1),
        ("latency_us", ["2", "4", "10", "20", "50", "100", "250", "500", "750", "1000"], 1_000),
        ("latency_ms", ["2", "4", "10", "20", "50", "100", "250", "500", "750", "1000", "2000"], 1_000_000),
    ];

    private static readonly long[] LatencyBounds = [.. LatencyGroupNames.SelectMany(g => g.Keys.Select(k => long.Parse(k, Inv) * g.Scale))];

    /// <summary>
    /// The share of I/Os (in percent) in each of fio's latency groups: <c>latency_ns</c>,
    /// <c>latency_us</c>, <c>latency_ms</c> (whose last, <c>&gt;=2000</c>, holds 2 s and more).
    /// The groups count the latencies of <paramref name="all"/>, the I/Os that succeeded, and the
    /// shares are of <paramref name="totalIos"/>, every I/O of the window, failed ones too, reads
    /// and writes together, as fio's: stat.c <c>stat_calc_lat</c> divides by
    /// <c>ddir_rw_sum(ts-&gt;total_io_u)</c>, which counts each I/O as it is issued
    /// (ioengines.c <c>td_io_queue</c>), while io_u.c marks a latency (<c>io_u_mark_latency</c>)
    /// only in <c>account_io_completion</c>, which <c>io_completed</c> calls for an I/O without an
    /// error. With failed I/Os the shares add up to less than 100%.
    /// </summary>
    internal static IReadOnlyDictionary<string, IReadOnlyList<(string Key, double Percent)>> LatencyGroups(LatencyRecorder all, long totalIos)
    {
        var counts = all.Groups(LatencyBounds);
        var total = Math.Max(totalIos, 1);
        var result = new Dictionary<string, IReadOnlyList<(string, double)>>();
        var index = 0;
        foreach (var (name, keys, _) in LatencyGroupNames)
        {
            var list = new List<(string, double)>();
            foreach (var key in keys)
            {
                list.Add((key, Percent(counts[index++], total)));
            }

            if (name == "latency_ms")
            {
                list.Add((">=2000", Percent(counts[index], total)));
            }

            result[name] = list;
        }

        return result;
    }

    // fio's stat_calc_lat: a group that holds any I/O shows at least 0.01%.
    private static double Percent(long count, long total) => count == 0 ? 0 : Math.Max(0.01, 100.0 * count / total);

    // fio's ddir_rw_sum(total_io_u): every I/O of the window, failed or not (trims: none).
    private static long AllIos(BenchResult r) => r.Read.TotalIos + r.Write.TotalIos;

    private static LatencyRecorder AllLatencies(BenchResult r)
    {
        var all = new LatencyRecorder();
        all.Add(r.Read.Total);
        all.Add(r.Write.Total);
        return all;
    }

    private static void WriteLatencyGroups(Utf8JsonWriter w, BenchResult r)
    {
        foreach (var (name, groups) in LatencyGroups(AllLatencies(r), AllIos(r)))
        {
            w.WriteStartObject(name);
            foreach (var (key, percent) in groups)
            {
                w.WritePropertyName(key);
                w.WriteRawValue(percent.ToString("F6", Inv));
            }

            w.WriteEndObject();
        }

        w.WriteNumber("latency_depth", r.Options.IoDepth);
        w.WriteNumber("latency_target", 0);
        w.WritePropertyName("latency_percentile");
        w.WriteRawValue(100.0.ToString("F6", Inv));
        w.WriteNumber("latency_window", 0);
    }

    // fio's iodepth_level groups, in order.
    private static readonly string[] DepthKeys = ["1", "2", "4", "8", "16", "32", ">=64"];

    /// <summary>fio's <c>iodepth_level</c> group of a queue depth: 1, 2, 4, 8, 16, 32 or &gt;=64.</summary>
    internal static string DepthGroup(int depth) => depth switch
    {
        <= 1 => "1",
        < 4 => "2",
        < 8 => "4",
        < 16 => "8",
        < 32 => "16",
        < 64 => "32",
        _ => ">=64",
    };

    // iodepth_level: a job keeps --iodepth I/Os in flight by construction (that many slots, each
    // submitting its next I/O when its last completes), so every submission after the first
    // --iodepth finds that depth. The share of the fill is below 0.01% of any run; it is left out.
    private static void WriteDepths(Utf8JsonWriter w, int depth)
    {
        var group = DepthGroup(depth);
        w.WriteStartObject("iodepth_level");
        foreach (var key in DepthKeys)
        {
            w.WritePropertyName(key);
            w.WriteRawValue((key == group ? 100.0 : 0.0).ToString("F6", Inv));
        }

        w.WriteEndObject();
    }

    /// <summary>
    /// fio's <c>bw_agg</c> and the <c>per=</c> of its <c>bw</c> line (stat.c
    /// <c>convert_agg_kbytes_percent</c>, fio 3.33): the job's mean bandwidth sample
    /// (<paramref name="meanKiBPerSecond"/>, truncated to a whole number as fio passes it) as a
    /// percentage of its group's aggregate bandwidth, at most 100. The aggregate is fio's
    /// <c>rs-&gt;agg</c>: the group's bytes (<paramref name="groupBytes"/>) times 1000 over its longest
    /// runtime in whole milliseconds (<paramref name="groupRuntime"/>, rounded up as <see cref="WindowMs"/>), in bytes per second, integer
    /// division; at 1024 bytes per second or less the share is 100. The bench reports one job, the
    /// group (fio's group_reporting), whose samples are of every job and device together.
    /// </summary>
    internal static double PercentOfAggregate(double meanKiBPerSecond, long groupBytes, TimeSpan groupRuntime)
    {
        var runMs = WindowMs(groupRuntime);
        var aggregate = runMs > 0 ? (ulong)Math.Max(groupBytes, 0) * 1000UL / (ulong)runMs : 0;
        if (aggregate <= 1024)
        {
            return 100.0;
        }

        var share = (int)meanKiBPerSecond * 100.0 / (aggregate / 1024.0);
        return Math.Min(share, 100.0);
    }

    /// <summary>The engines the hardware queues used, "+"-joined when they differ ("io_uring+psync"); "none" when no queue dispatched.</summary>
    public static string EngineSummary(IReadOnlyList<string?> engines)
    {
        var used = engines.OfType<string>().Distinct(StringComparer.Ordinal).ToArray();
        return used.Length == 0 ? "none" : string.Join("+", used);
    }

    private static void WriteEngines(Utf8JsonWriter w, IReadOnlyList<string?> engines)
    {
        w.WriteStartArray("engines");
        foreach (var e in engines)
        {
            if (e is null)
            {
                w.WriteNullValue();
            }
            else
            {
                w.WriteStringValue(e);
            }
        }

        w.WriteEndArray();
    }

    // fio 3.33 stat.c add_ddir_status_json(ts, rs, DDIR_SYNC, root): "sync" with total_ios and
    // lat_ns (percentiles only with samples). The bench issues no fsync, so both are empty.
    private static void WriteSync(Utf8JsonWriter w)
    {
        w.WriteStartObject("sync");
        w.WriteNumber("total_ios", 0);
        WriteLatency(w, "lat_ns", new LatencyRecorder(), percentiles: false);
        w.WriteEndObject();
    }

    private static void WriteLatency(Utf8JsonWriter w, string name, LatencyRecorder l, bool percentiles, bool bins = false)
    {
        w.WriteStartObject(name);
        w.WriteNumber("min", l.Count == 0 ? 0 : l.Min);
        w.WriteNumber("max", l.Max);
        w.WriteNumber("mean", Math.Round(l.Mean, 6));
        w.WriteNumber("stddev", Math.Round(l.StdDev, 6));
        w.WriteNumber("N", l.Count);
        if (percentiles && l.Count > 0)
        {
            // fio's percentiles, from its buckets (stat.c calc_clat_percentiles).
            w.WriteStartObject("percentile");
            var values = l.FioPercentiles(Percentiles);
            for (var i = 0; i < Percentiles.Length; i++)
            {
                w.WriteNumber(Percentiles[i].ToString("0.000000", Inv), values[i]);
            }

            w.WriteEndObject();
            if (bins)
            {
                w.WriteStartObject("bins");
                foreach (var (value, count) in l.FioBins())
                {
                    w.WriteNumber(value.ToString(Inv), count);
                }

                w.WriteEndObject();
            }
        }

        w.WriteEndObject();
    }

    /// <summary>
    /// fio's <c>display_lat</c>: nanoseconds, or microseconds / milliseconds when the spread is
    /// that large (<c>nsec_to_usec</c>, <c>nsec_to_msec</c>: min over 2,000 / 2,000,000, max over
    /// 99,999 / 99,999,999, stdev over 1,000 / 1,000,000), min and max as fio's <c>num2str</c>
    /// writes them (six characters at most: 1234567 is 1234.6k).
    /// </summary>
    private static void Line(StringBuilder sb, string label, LatencyRecorder l)
    {
        var min = l.Count == 0 ? 0UL : (ulong)l.Min;
        var max = (ulong)l.Max;
        var (mean, dev, unit) = (l.Mean, l.StdDev, "nsec");
        if (min > 2_000_000 && max > 99_999_999 && dev > 1_000_000.0)
        {
            (min, max, mean, dev, unit) = (min / 1_000_000, max / 1_000_000, mean / 1_000_000.0, dev / 1_000_000.0, "msec");
        }
        else if (min > 2000 && max > 99_999 && dev > 1000.0)
        {
            (min, max, mean, dev, unit) = (min / 1000, max / 1000, mean / 1000.0, dev / 1000.0, "usec");
        }

        sb.Append(Inv, $"{label} ({unit}): min={Num2Str(min)}, max={Num2Str(max)}, avg={mean,5:0.00}, stdev={dev,5:0.00}\n");
    }

    /// <summary>
    /// fio's <c>show_clat_percentiles</c> at its default precision (2), of fio's percentiles
    /// (<see cref="LatencyRecorder.FioPercentiles"/>): nanoseconds, or
    /// microseconds / milliseconds when the values' range is that large (each value rounded up),
    /// the value column as wide as the largest needs (at least 5), as many to a line as fit 80
    /// columns.
    /// </summary>
    private static void PercentileLines(StringBuilder sb, string label, LatencyRecorder l)
    {
        var values = l.FioPercentiles(Percentiles).Select(v => (ulong)v).ToArray();
        var (minv, maxv) = (values.Min(), values.Max());
        var (scale, divisor, unit) = minv > 2_000_000 && maxv > 99_999_999 ? (2, 1_000_000UL, "msec")
            : minv > 2000 && maxv > 99_999 ? (1, 1000UL, "usec")
            : (0, 1UL, "nsec");
        var width = Math.Max(5, (int)(Math.Log10(maxv / divisor) + 1));
        var perLine = (80 - 7) / (2 + 10 + width);
        sb.Append(Inv, $"    {label} percentiles ({unit}):\n     |");
        for (var j = 0; j < values.Length; j++)
        {
            if (j != 0 && j % perLine == 0)
            {
                sb.Append("     |");
            }

            var value = values[j];
            for (var i = 0; i < scale; i++)
            {
                value = (value + 999) / 1000;
            }

            var last = j == values.Length - 1;
            sb.Append(Inv, $" {Percentiles[j],5:0.00}th=[").Append(value.ToString(Inv).PadLeft(width)).Append(']').Append(last ? '\n' : ',');
            if (!last && j % perLine == perLine - 1)
            {
                sb.Append('\n');
            }
        }
    }

    /// <summary>fio's <c>num2str(num, 6, 1, 0, N2S_NONE)</c>: at most six characters, with k, M, G, ... and decimals where they fit.</summary>
    public static string Num2Str(ulong num, int maxLength = 6) => Num2Str(num, maxLength, 1, pow2: false, string.Empty);

    /// <summary>
    /// fio's <c>num2str(num, maxlen, base, pow2, units)</c> (lib/num2str.c), carry rounding and
    /// all: divides by 1000 (or 1024 with <paramref name="pow2"/>) until at most
    /// <paramref name="maxLength"/> digits are left, then fills the room left (counting the point)
    /// with decimals. <paramref name="scale"/> is what one unit of <paramref name="num"/> is
    /// (1024 for KiB). <paramref name="units"/> is "", "B" or "B/s".
    /// </summary>
    public static string Num2Str(ulong num, int maxLength, int scale, bool pow2, string units)
    {
        string[] prefixes = pow2 ? ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"] : ["", "k", "M", "G", "T", "P", "E"];
        var thousand = pow2 ? 1024u : 1000u;
        var post = 0;
        for (; scale > 1; post++)
        {
            scale /= (int)thousand;
        }

        var modulo = uint.MaxValue;
        var carry = false;
        while (post < prefixes.Length)
        {
            if (num.ToString(Inv).Length <= maxLength)
            {
                break;
            }

            modulo = (uint)(num % thousand);
            num /= thousand;
            carry = modulo >= thousand / 2;
            post++;
        }

        if (post >= prefixes.Length)
        {
            post = 0;
        }

        if (modulo == uint.MaxValue)
        {
            return num.ToString(Inv) + prefixes[post] + units;
        }

        var digits = num.ToString(Inv).Length;
        if (maxLength - digits <= 1)
        {
            return (carry ? num + 1 : num).ToString(Inv) + prefixes[post] + units;
        }

        var fraction = ((double)modulo / thousand).ToString("F" + (maxLength - digits - 1).ToString(Inv), Inv);
        if (fraction[0] == '1')
        {
            num++;
        }

        return $"{num.ToString(Inv)}.{fraction[2..]}{prefixes[post]}{units}";
    }

    /// <summary>fio's IOPS figure: <c>num2str(iops, 4, 1, 0, N2S_NONE)</c> (4 significant figures, fio's default): 13.8k, 2906k.</summary>
    public static string Count(double value) => Num2Str((ulong)Math.Max(0, value), SigFigs, 1, pow2: false, string.Empty);

    // fio's significant_figures default, the maxlen of every num2str in its normal output.
    private const int SigFigs = 4;

    // fio's byte counts and rates, binary then decimal: "649MiB" and "680MB", "54.1MiB/s" and "56.7MB/s".
    private static string Bytes(double bytes, bool pow2) => Num2Str((ulong)Math.Max(0, bytes), SigFigs, 1, pow2, "B");

    private static string Rate(double bytesPerSecond, bool pow2) => Num2Str((ulong)Math.Max(0, bytesPerSecond), SigFigs, 1, pow2, "B/s");
}

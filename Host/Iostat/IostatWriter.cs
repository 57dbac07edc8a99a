using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;

namespace ActorBlk.Host.Iostat;

/// <summary>
/// Writes <c>actorblk iostat</c>'s reports as sysstat's iostat lays them out: the banner and a
/// blank line, then per report the time (<c>-t</c>), the CPU report, the device report and two
/// blank lines (sysstat since 12.1.4; 12.0 wrote one); or with <c>-o JSON</c>
/// sysstat's document (<c>print_gal_header</c>, <c>write_stats</c>, the closing brackets written
/// on an interrupt too), tab-indented as sysstat's.
/// </summary>
internal sealed class IostatWriter(TextWriter output, IostatOptions options)
{
    private bool _begun;
    private bool _ended;
    private int _reports;

    /// <summary>sysstat's <c>S_TIME_FORMAT=ISO</c>: dates and times in ISO 8601.</summary>
    public bool Iso { get; init; } = Environment.GetEnvironmentVariable("S_TIME_FORMAT") == "ISO";

    /// <summary>
    /// The banner: <c>ActorBlk VERSION (NODE) DATE _MACHINE_ (N CPU)</c> where sysstat writes the
    /// kernel's name, release and host; in JSON the document's opening and the host's fields.
    /// </summary>
    public async Task BeginAsync(string node, int cpus, DateTimeOffset now)
    {
        var release = typeof(ActorBlk.Actors.BlockLayer).Assembly.GetName().Version?.ToString(3) ?? "0";
        var date = now.ToString(Iso ? "yyyy-MM-dd" : "MM/dd/yy", CultureInfo.InvariantCulture);
        _begun = true;
        if (options.Json)
        {
            var sb = new StringBuilder();
            sb.Append("{\"sysstat\": {\n");
            sb.Append("\t\"hosts\": [\n");
            sb.Append("\t\t{\n");
            sb.Append("\t\t\t\"nodename\": ").Append(Json(node)).Append(",\n");
            sb.Append("\t\t\t\"sysname\": \"ActorBlk\",\n");
            sb.Append("\t\t\t\"release\": ").Append(Json(release)).Append(",\n");
            sb.Append("\t\t\t\"machine\": ").Append(Json(Machine)).Append(",\n");
            sb.Append(CultureInfo.InvariantCulture, $"\t\t\t\"number-of-cpus\": {cpus},\n");
            sb.Append("\t\t\t\"date\": ").Append(Json(date)).Append(",\n");
            sb.Append("\t\t\t\"statistics\": [\n");
            await output.WriteAsync(sb.ToString()).ConfigureAwait(false);
        }
        else
        {
            await output.WriteLineAsync(string.Create(CultureInfo.InvariantCulture, $"ActorBlk {release} ({node}) \t{date} \t_{Machine}_\t({cpus} CPU)")).ConfigureAwait(false);
            await output.WriteLineAsync().ConfigureAwait(false);
        }

        await output.FlushAsync().ConfigureAwait(false);
    }

    /// <summary>
    /// One report, taken at <paramref name="at"/>, laid out as sysstat's <c>write_stats</c> and
    /// <c>rw_io_stat_loop</c> write it. In tables: the time (<c>-t</c>); the CPU report (its
    /// header, its values and a blank line); the device report (its header and rows, in four
    /// parts under <c>--pretty -x</c>, a blank line between parts); then the blank line that
    /// ends <c>write_stats</c> and the one the loop writes after each report. In JSON: one
    /// element of <c>statistics</c>, with <c>"avg-cpu"</c> before <c>"disk"</c>. The CPU report
    /// is written when the options ask for it and <paramref name="cpu"/> is given; the device
    /// report when they ask for it.
    /// </summary>
    public async Task ReportAsync(DateTimeOffset at, IReadOnlyList<IostatRow> rows, IostatCpu? cpu = null)
    {
        ArgumentNullException.ThrowIfNull(rows);
        var sb = new StringBuilder();
        var withCpu = options.CpuReport && cpu is not null;
        if (options.Json)
        {
            // sysstat writes "," before the newline that ends the previous report's "}".
            sb.Append(_reports > 0 ? ",\n" : string.Empty);
            sb.Append("\t\t\t\t{\n");
            if (options.Timestamp)
            {
                sb.Append("\t\t\t\t\t\"timestamp\": ").Append(Json(Timestamp(at))).Append(",\n");
            }

            if (withCpu)
            {
                sb.Append("\t\t\t\t\t").Append(IostatReport.JsonCpu(cpu!)).Append(options.DiskReport ? ",\n" : "\n");
            }

            if (options.DiskReport)
            {
                sb.Append("\t\t\t\t\t\"disk\": [\n");
                for (var i = 0; i < rows.Count; i++)
                {
                    sb.Append("\t\t\t\t\t\t").Append(!options.Extended ? IostatReport.JsonBasic(rows[i], options.Unit)
                        : options.Short ? IostatReport.JsonExtendedShort(rows[i], options.Unit) : IostatReport.JsonExtended(rows[i], options.Unit));
                    sb.Append(i + 1 < rows.Count ? ",\n" : "\n");
                }

                if (rows.Count == 0)
                {
                    sb.Append('\n');
                }

                sb.Append("\t\t\t\t\t]\n");
            }

            sb.Append("\t\t\t\t}");
        }
        else
        {
            if (options.Timestamp)
            {
                sb.Append(Timestamp(at)).Append('\n');
            }

            if (withCpu)
            {
                sb.Append(IostatReport.CpuHeader).Append('\n');
                sb.Append(IostatReport.FormatCpu(cpu!, options.Decimals, options.Human)).Append("\n\n");
            }

            if (options.DiskReport)
            {
                var layout = options.Layout;
                var parts = options.Parts;
                foreach (var part in parts)
                {
                    sb.Append(IostatReport.Header(options.Extended, layout, part)).Append('\n');
                    foreach (var row in rows)
                    {
                        sb.Append(IostatReport.Format(row, options.Extended, layout, part)).Append('\n');
                    }

                    if (part > 0 && part < parts[^1])
                    {
                        sb.Append('\n');
                    }
                }
            }

            sb.Append("\n\n");
        }

        _reports++;
        await output.WriteAsync(sb.ToString()).ConfigureAwait(false);
        await output.FlushAsync().ConfigureAwait(false);
    }

    /// <summary>Closes the JSON document (once; nothing for tables, or before the banner).</summary>
    public async Task EndAsync()
    {
        if (!options.Json || !_begun || _ended)
        {
            return;
        }

        _ended = true;
        await output.WriteAsync((_reports > 0 ? "\n" : string.Empty) + "\t\t\t]\n\t\t}\n\t]\n}}\n").ConfigureAwait(false);
        await output.FlushAsync().ConfigureAwait(false);
    }

    // sysstat's DATE_TIME_FORMAT_ISO "%FT%T%z", or "%x %X" in the C locale.
    private string Timestamp(DateTimeOffset at)
    {
        if (!Iso)
        {
            return at.ToString("MM/dd/yy HH:mm:ss", CultureInfo.InvariantCulture);
        }

        var offset = at.Offset;
        var sign = offset < TimeSpan.Zero ? '-' : '+';
        offset = offset.Duration();
        return string.Create(CultureInfo.InvariantCulture, $"{at:yyyy-MM-ddTHH:mm:ss}{sign}{offset.Hours:00}{offset.Minutes:00}");
    }

    // uname's machine for the process's architecture (the node is usually this machine).
    private static string Machine => RuntimeInformation.OSArchitecture switch
    {
        Architecture.X64 => "x86_64",
        Architecture.Arm64 => "aarch64",
        Architecture.X86 => "i686",
        var other => other.ToString().ToLowerInvariant(),
    };

    /// <summary>
    /// <paramref name="text"/> as a JSON string, escaping only what JSON requires: the default
    /// encoder also escapes HTML's characters, so an ISO timestamp's <c>+0000</c> came out as
    /// <c>\u002B0000</c> (an operator audit; sysstat writes <c>+0000</c>).
    /// </summary>
    internal static string Json(string text) => System.Text.Json.JsonSerializer.Serialize(text, Relaxed);

    private static readonly System.Text.Json.JsonSerializerOptions Relaxed = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
}

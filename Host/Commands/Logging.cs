using Serilog;
using Serilog.Events;

namespace ActorBlk.Host.Commands;

/// <summary>The console logger of the `actorblk` command.</summary>
internal static class Logging
{
    public const string Template = "[{Timestamp:HH:mm:ss.fff} {Level:u3}] {Message:lj}{NewLine}{Exception}";

    /// <summary>
    /// A console logger at <paramref name="level"/>; on stderr with <paramref name="toStandardError"/>.
    /// What peers send that the transport cannot read is limited (<see cref="PeerNoiseLimiter"/>), and
    /// a peer that ended its connection is one information line (<see cref="DisassociationFilter"/>).
    /// </summary>
    public static ILogger CreateConsoleLogger(LogEventLevel level = LogEventLevel.Information, bool toStandardError = false) => new LoggerConfiguration()
        .MinimumLevel.Is(level)
        .WriteTo.Sink(new DisassociationFilter(new PeerNoiseLimiter(new LoggerConfiguration()
            .MinimumLevel.Is(LogEventLevel.Verbose)
            .WriteTo.Console(outputTemplate: Template, formatProvider: System.Globalization.CultureInfo.InvariantCulture,
                standardErrorFromLevel: toStandardError ? LogEventLevel.Verbose : null)
            .CreateLogger()), level))
        .CreateLogger();
}

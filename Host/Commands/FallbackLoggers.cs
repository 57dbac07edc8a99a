using Akka.Event;
using LogEventLevel = Serilog.Events.LogEventLevel;

namespace ActorBlk.Host.Commands;

/// <summary>
/// Akka's last-resort logger (<c>akka.stdout-logger-class</c>) for <c>serve</c> and <c>bench</c>:
/// what Akka logs before the Serilog logger starts and after it stops goes to Serilog too, at the
/// level Akka gave it. Akka's own <c>StandardOutLogger</c> writes to stdout, and when the logger
/// actor stops with events still in its mailbox Akka hands them all to it, whatever
/// <c>stdout-loglevel</c> says (LoggerMailbox.CleanUp): a README walk-through found a node's
/// <c>[INFO][...] Remoting shut down</c> in Akka's plain format on stdout after the Serilog lines,
/// and in <c>bench</c> such a line would land in the JSON report. Once Serilog is closed the
/// events are dropped.
/// </summary>
internal sealed class SerilogFallbackLogger : MinimalLogger
{
    /// <summary>The type as <c>akka.stdout-logger-class</c> names it.</summary>
    public const string TypeName = "ActorBlk.Host.Commands.SerilogFallbackLogger, actorblk";

    /// <summary>Writes <paramref name="e"/> to <paramref name="target"/> at its level, with its cause.</summary>
    public static void Write(Serilog.ILogger target, LogEvent e)
    {
        ArgumentNullException.ThrowIfNull(target);
        ArgumentNullException.ThrowIfNull(e);
        var level = e.LogLevel() switch
        {
            Akka.Event.LogLevel.DebugLevel => LogEventLevel.Debug,
            Akka.Event.LogLevel.InfoLevel => LogEventLevel.Information,
            Akka.Event.LogLevel.WarningLevel => LogEventLevel.Warning,
            _ => LogEventLevel.Error,
        };
        target.Write(level, e.Cause, "{AkkaMessage:l}", e.Message?.ToString() ?? string.Empty);
    }

    /// <inheritdoc />
    protected override void Log(object message)
    {
        if (message is LogEvent e)
        {
            Write(Serilog.Log.Logger, e);
        }
    }
}

/// <summary>
/// Akka's last-resort logger (<c>akka.stdout-logger-class</c>) for the client commands
/// (<see cref="NodeClient"/>): what reaches it goes to stderr, filtered as <see cref="ClientLogger"/>
/// filters, so stdout carries the command's output alone even for the events Akka drains from a
/// stopping logger's mailbox (which ignore <c>stdout-loglevel</c>).
/// </summary>
internal sealed class ClientFallbackLogger : MinimalLogger
{
    /// <summary>The type as <c>akka.stdout-logger-class</c> names it.</summary>
    public const string TypeName = "ActorBlk.Host.Commands.ClientFallbackLogger, actorblk";

    /// <inheritdoc />
    protected override void Log(object message)
    {
        if (message is LogEvent e)
        {
            ClientLogger.WriteToStandardError(e);
        }
    }
}

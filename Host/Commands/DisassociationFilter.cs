using Serilog.Core;
using Serilog.Events;
using Serilog.Parsing;

namespace ActorBlk.Host.Commands;

/// <summary>
/// Akka.Remote reports every peer that closes its connection (a `devices` or `iostat` call that
/// ended, a `bench --join` client or an application that stopped, a node that left or died) with
/// a warning carrying the disassociation's stack trace and an ERROR line with the same stack (a
/// cluster audit: about 15 stack lines per ordinary client exit on every node it talked to).
/// Ending a connection is no fault: the warning becomes one information line naming the peer,
/// and the ERROR line, which names no peer, is left out. A node that died is reported by the
/// cluster itself (unreachable, downed). DotNetty's "Unable to REMOVE channel ... May not shut down
/// cleanly", which a transport that shuts down logs for each connection it already let go, is a
/// debug line. Every other event passes unchanged.
/// </summary>
internal sealed class DisassociationFilter(ILogEventSink inner, LogEventLevel minimum = LogEventLevel.Verbose) : ILogEventSink
{
    /// <summary>Akka.Remote's exception for a connection the peer ended (internal to it, so named).</summary>
    private const string Disassociated = "Akka.Remote.EndpointDisassociatedException";

    private const string GatedPrefix = "Association with remote system ";

    // DotNetty's transport, when a connection that closes is no longer in its group (the
    // transport shutting down has cleared it already): every `bench --join` client's clean exit
    // printed one per peer (an outside audit). It says nothing about the data.
    private const string UnableToRemovePrefix = "Unable to REMOVE channel [";

    // Akka.Remote's AssociationErrorEvent, as its EventPublisher logs it: the cause's message and
    // then its whole stack trace inside the text ("... Error [MESSAGE] [   at ...]").
    private const string AssociationErrorPrefix = "AssociationError [";
    private const string QuarantinedThisSystem = "Error [The remote system has quarantined this system.";
    private static readonly MessageTemplateParser Parser = new();

    /// <inheritdoc />
    public void Emit(LogEvent logEvent)
    {
        ArgumentNullException.ThrowIfNull(logEvent);
        if (logEvent.Level >= LogEventLevel.Error && HasDisassociation(logEvent.Exception))
        {
            return;
        }

        if (logEvent.Level == LogEventLevel.Warning && logEvent.Exception is null &&
            logEvent.MessageTemplate.Text.StartsWith(GatedPrefix, StringComparison.Ordinal))
        {
            var text = PeerNoiseLimiter.Literal(logEvent);
            var reason = text.IndexOf(" Reason is: [" + Disassociated + ":", StringComparison.Ordinal);
            if (reason > 0)
            {
                if (minimum > LogEventLevel.Information)
                {
                    return;
                }

                var line = text[..reason].Replace(" has failed;", " ended (the peer closed its connection: a client that exited, or a node that left or died);", StringComparison.Ordinal);
                inner.Emit(new LogEvent(logEvent.Timestamp, LogEventLevel.Information, null,
                    Parser.Parse(line.Replace("{", "{{", StringComparison.Ordinal).Replace("}", "}}", StringComparison.Ordinal)), []));
                return;
            }
        }

        if (logEvent.Level >= LogEventLevel.Error && logEvent.Exception is null &&
            QuarantinedLine(PeerNoiseLimiter.Literal(logEvent)) is { } quarantined)
        {
            if (minimum <= LogEventLevel.Warning)
            {
                inner.Emit(new LogEvent(logEvent.Timestamp, LogEventLevel.Warning, null,
                    Parser.Parse(quarantined.Replace("{", "{{", StringComparison.Ordinal).Replace("}", "}}", StringComparison.Ordinal)), []));
            }

            return;
        }

        if (logEvent.Level == LogEventLevel.Warning &&
            logEvent.MessageTemplate.Text.StartsWith(UnableToRemovePrefix, StringComparison.Ordinal))
        {
            if (minimum <= LogEventLevel.Debug)
            {
                inner.Emit(new LogEvent(logEvent.Timestamp, LogEventLevel.Debug, logEvent.Exception, logEvent.MessageTemplate,
                    logEvent.Properties.Select(p => new LogEventProperty(p.Key, p.Value))));
            }

            return;
        }

        inner.Emit(logEvent);
    }

    // A node that the others removed while it could not answer (frozen by SIGSTOP, a long pause, a
    // partition) learns it when it reconnects: Akka.Remote logs this ERROR with the endpoint
    // reader's stack (6 lines) for every peer every 5 s; the first notice from a member makes the
    // node down itself (QuarantineWatcher). The line keeps Akka's words without the stack, and says
    // what follows.
    private static string? QuarantinedLine(string text)
    {
        if (!text.StartsWith(AssociationErrorPrefix, StringComparison.Ordinal))
        {
            return null;
        }

        var error = text.IndexOf(QuarantinedThisSystem, StringComparison.Ordinal);
        if (error < 0)
        {
            return null;
        }

        var end = text.IndexOf("] [", error, StringComparison.Ordinal);
        return (end < 0 ? text : text[..(end + 1)]) +
            " (the cluster removed this node while it did not answer: a freeze, a pause or a partition; it downs itself and `serve` exits 1)";
    }

    private static bool HasDisassociation(Exception? exception)
    {
        for (var e = exception; e is not null; e = e.InnerException)
        {
            if (e.GetType().FullName == Disassociated)
            {
                return true;
            }
        }

        return false;
    }
}

using Serilog.Core;
using Serilog.Events;
using Serilog.Parsing;

namespace ActorBlk.Host.Commands;

/// <summary>
/// Keeps what peers send from flooding the log: Akka.Remote logs every malformed frame, protocol
/// message or refused payload a peer sends with a full stack trace (an outside audit: 3,000 connections of
/// 6 bytes, 18 KB, wrote 21,023 lines, 2.1 MB, in 0.2 s). Such an event (an exception from the
/// transport's frame decoder or Akka's protocol decoder) is written as one warning line naming the
/// exception, at most <see cref="PerWindow"/> a minute; the next line after a window with drops
/// says how many were dropped. Everything else passes unchanged.
/// </summary>
internal sealed class PeerNoiseLimiter(ILogEventSink inner, TimeProvider? time = null) : ILogEventSink
{
    /// <summary>Peer-noise lines written per window.</summary>
    public const int PerWindow = 10;

    private static readonly TimeSpan Window = TimeSpan.FromMinutes(1);
    private static readonly MessageTemplateParser Parser = new();

    private readonly TimeProvider _time = time ?? TimeProvider.System;
    private readonly object _lock = new();
    private long _windowStart = long.MinValue;
    private int _written;
    private long _dropped;

    /// <inheritdoc />
    public void Emit(LogEvent logEvent)
    {
        ArgumentNullException.ThrowIfNull(logEvent);
        if (!IsPeerNoise(logEvent.Exception) && !IsTlsNoise(logEvent))
        {
            inner.Emit(logEvent);
            return;
        }

        long dropped;
        lock (_lock)
        {
            var now = _time.GetTimestamp();
            if (_windowStart == long.MinValue || _time.GetElapsedTime(_windowStart, now) >= Window)
            {
                _windowStart = now;
                _written = 0;
            }

            if (_written >= PerWindow)
            {
                _dropped++;
                return;
            }

            _written++;
            dropped = _dropped;
            _dropped = 0;
        }

        // The message's first line: Akka's TLS events carry lines of troubleshooting advice.
        var literal = Literal(logEvent);
        literal = literal.Split('\n', 2)[0].TrimEnd('\r');
        var cause = logEvent.Exception is null ? null : Innermost(logEvent.Exception);
        var text = $"{literal}{(cause is null ? string.Empty : $": {cause.GetType().Name}: {cause.Message}")} (a peer sent what the node cannot or will not read; at most {PerWindow} such lines a minute"
            + (dropped > 0 ? $", {dropped} dropped before this one)" : ")");
        inner.Emit(new LogEvent(logEvent.Timestamp, LogEventLevel.Warning, null, Parser.Parse(text.Replace("{", "{{", StringComparison.Ordinal).Replace("}", "}}", StringComparison.Ordinal)),
            logEvent.Properties.Select(p => new LogEventProperty(p.Key, p.Value))));
    }

    // The transport's frame decoder (DotNetty's decoder exceptions) or Akka's PDU decoder failing
    // on bytes from the network: nothing the node did, nothing a stack trace helps with. Not Akka's
    // other protocol failures (a member's handshake timing out, a disassociation) nor an encoder's.
    internal static bool IsPeerNoise(Exception? exception)
    {
        if (IsTransportNoise(exception))
        {
            return true;
        }

        for (var e = exception; e is not null; e = e.InnerException)
        {
            // A message ActorBlk's serializers refused (a peer outside the cluster, a type not on
            // the wire schema): the refusal is already logged once as a warning where it applies.
            if (e is System.Runtime.Serialization.SerializationException && e.Message.StartsWith("ActorBlk refuses", StringComparison.Ordinal))
            {
                return true;
            }
        }

        return false;
    }

    // Akka.Remote's events for a TLS handshake that failed, from the transport and its certificate
    // validators: with TLS on, every connection from a peer without the node's certificate (or
    // that does not speak TLS) wrote three of them, one with 12 lines of advice and a stack trace:
    // an outside audit's 300 connections of 6 bytes (1.8 KB) wrote 3,600 lines, 290 KB, which the
    // limit on the same bytes without TLS did not reach.
    private static readonly string[] TlsEvents =
    [
        "TLS handshake failed on channel ", "TLS exception on channel ", "Rejected incoming connection from [",
        "Certificate pinning failed for ", "Certificate chain validation failed for ", "Mutual TLS required but client did not provide a certificate",
    ];

    internal static bool IsTlsNoise(LogEvent logEvent)
    {
        if (logEvent.Level < LogEventLevel.Warning)
        {
            return false;
        }

        var text = logEvent.MessageTemplate.Text;
        foreach (var prefix in TlsEvents)
        {
            if (text.StartsWith(prefix, StringComparison.Ordinal))
            {
                return true;
            }
        }

        return false;
    }

    // The transport's frame decoder or Akka's PDU decoder failing on bytes from the network (with
    // TLS on, the TLS handler's: a record that is not TLS).
    internal static bool IsTransportNoise(Exception? exception)
    {
        for (var e = exception; e is not null; e = e.InnerException)
        {
            if (e.GetType().FullName is "DotNetty.Codecs.CorruptedFrameException" or "DotNetty.Codecs.TooLongFrameException" or "DotNetty.Codecs.DecoderException"
                or "DotNetty.Handlers.Tls.NotSslRecordException" or "Akka.Remote.Transport.PduCodecException")
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>The message with its values as they are (strings unquoted, as the console shows them with <c>:lj</c>).</summary>
    internal static string Literal(LogEvent logEvent)
    {
        var text = new System.Text.StringBuilder();
        foreach (var token in logEvent.MessageTemplate.Tokens)
        {
            text.Append(token switch
            {
                PropertyToken p when logEvent.Properties.TryGetValue(p.PropertyName, out var value) =>
                    value is ScalarValue { Value: string s } ? s : value.ToString(null, System.Globalization.CultureInfo.InvariantCulture),
                _ => token.ToString(),
            });
        }

        return text.ToString();
    }

    private static Exception Innermost(Exception exception)
    {
        var e = exception;
        while (e.InnerException is not null)
        {
            e = e.InnerException;
        }

        return e;
    }
}

using ActorBlk.Host.Commands;
using ActorBlk.Testing;
using Serilog.Events;
using Serilog.Parsing;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// What peers send that the remoting transport cannot read reaches the log as one warning line
/// each, at most ten a minute (an outside audit: 3,000 connections of 6 bytes wrote 21,023 log
/// lines with a stack trace each); every other event passes unchanged.
/// </summary>
public sealed class PeerNoiseLimiterSpec
{
    private static readonly MessageTemplateParser Parser = new();

    private static LogEvent Event(LogEventLevel level, string text, Exception? exception) =>
        new(DateTimeOffset.UnixEpoch, level, exception, Parser.Parse(text), []);

    [Fact]
    public void Frames_a_peer_garbled_are_one_line_each_at_most_ten_a_minute_and_the_drops_are_counted()
    {
        var time = new ManualTimeProvider();
        var sink = new CollectingSink();
        var limiter = new PeerNoiseLimiter(sink, time);
        for (var i = 0; i < 50; i++)
        {
            limiter.Emit(Event(LogEventLevel.Error, "Error caught channel [peer {0}]", new DotNetty.Codecs.CorruptedFrameException("negative pre-adjustment length field: -65536")));
        }

        Assert.Equal(PeerNoiseLimiter.PerWindow, sink.Events.Count);
        var first = sink.Events[0];
        Assert.Equal(LogEventLevel.Warning, first.Level);
        Assert.Null(first.Exception);
        Assert.Equal("Error caught channel [peer {0}]: CorruptedFrameException: negative pre-adjustment length field: -65536 (a peer sent what the node cannot or will not read; at most 10 such lines a minute)",
            first.RenderMessage(System.Globalization.CultureInfo.InvariantCulture));

        // A minute later: the next line says how many were dropped.
        time.Advance(TimeSpan.FromMinutes(1));
        limiter.Emit(Event(LogEventLevel.Error, "Error while decoding incoming Akka PDU of length 16",
            new Akka.Remote.Transport.AkkaProtocolException("Error while decoding incoming Akka PDU of length 16",
                PduCodecException("Decoding PDU failed", new InvalidOperationException("input ended")))));
        Assert.EndsWith("InvalidOperationException: input ended (a peer sent what the node cannot or will not read; at most 10 such lines a minute, 40 dropped before this one)",
            sink.Events[^1].RenderMessage(System.Globalization.CultureInfo.InvariantCulture));

        // A payload ActorBlk's serializers refused (Akka.Remote's "Deserialization failed" with a stack trace).
        limiter.Emit(Event(LogEventLevel.Warning, "Deserialization failed for message with serializer id [5]",
            new System.Runtime.Serialization.SerializationException("ActorBlk refuses a cluster message (manifest 'J') that is not sealed with this node's admin secret.")));
        Assert.Null(sink.Events[^1].Exception);
        Assert.Contains("SerializationException: ActorBlk refuses a cluster message", sink.Events[^1].RenderMessage(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal);
    }

    // An outside audit: 1,000 nested envelopes from a peer without the secret wrote 33,001 log lines
    // (4.3 MB), each refusal with its stack: only refusals worded "ActorBlk refuses" were limited,
    // and the envelope, type and wire-schema refusals were worded otherwise.
    [Fact]
    public void Every_refusal_of_the_remoting_surface_is_limited_as_peer_noise()
    {
        var refusals = new List<Exception>();
        foreach (var message in new object[]
        {
            new ActorBlk.Actors.Serialization.RemoteSurface.Authenticated("x", new ActorBlk.Actors.Serialization.RemoteSurface.Authenticated("x", new ActorBlk.Actors.BlockLayer.Destroy("d119"))),
            new ActorBlk.Actors.Serialization.RemoteSurface.AuthenticatedWire("x", []),
        })
        {
            refusals.Add(Assert.Throws<System.Runtime.Serialization.SerializationException>(() => ActorBlk.Actors.Serialization.RemoteSurface.Admit(message, secret: null)));
        }

        var time = new ManualTimeProvider();
        var sink = new CollectingSink();
        var limiter = new PeerNoiseLimiter(sink, time);
        foreach (var refusal in refusals)
        {
            for (var i = 0; i < 50; i++)
            {
                limiter.Emit(Event(LogEventLevel.Warning, "Deserialization failed for message with serializer id [6]", refusal));
            }

            Assert.Equal(PeerNoiseLimiter.PerWindow, sink.Events.Count);
            Assert.All(sink.Events, e => Assert.Null(e.Exception));
            sink.Events.Clear();
            time.Advance(TimeSpan.FromMinutes(1));
        }
    }

    [Fact]
    public void Every_other_event_passes_unchanged_with_its_stack_trace()
    {
        var sink = new CollectingSink();
        var limiter = new PeerNoiseLimiter(sink, new ManualTimeProvider());
        var failure = new InvalidOperationException("a bug of ours");
        for (var i = 0; i < 50; i++)
        {
            limiter.Emit(Event(LogEventLevel.Error, "ActorBlk failed", failure));
        }

        // Nor Akka's other protocol failures with members (a handshake that timed out).
        for (var i = 0; i < 50; i++)
        {
            limiter.Emit(Event(LogEventLevel.Error, "Association failed", new Akka.Remote.Transport.AkkaProtocolException("No response from remote. Handshake timed out")));
        }

        Assert.Equal(100, sink.Events.Count);
        Assert.All(sink.Events.Skip(50), e => Assert.IsType<Akka.Remote.Transport.AkkaProtocolException>(e.Exception));
        sink.Events.RemoveRange(50, 50);
        Assert.All(sink.Events, e => Assert.Same(failure, e.Exception));
        Assert.All(sink.Events, e => Assert.Equal(LogEventLevel.Error, e.Level));
    }

    // Akka.Remote's PduCodecException is internal: built as its decoder throws it.
    private static Exception PduCodecException(string message, Exception cause)
    {
        var type = typeof(Akka.Remote.Transport.AkkaProtocolException).Assembly.GetType("Akka.Remote.Transport.PduCodecException", throwOnError: true)!;
        var ctor = type.GetConstructors(System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance)
            .First(c => c.GetParameters().Select(p => p.ParameterType).SequenceEqual([typeof(string), typeof(Exception)]));
        return (Exception)ctor.Invoke([message, cause]);
    }
}

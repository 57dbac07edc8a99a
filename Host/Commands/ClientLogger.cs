using Akka.Actor;
using Akka.Dispatch;
using Akka.Event;

namespace ActorBlk.Host.Commands;

/// <summary>
/// The Akka logger of the client commands' actor system (<see cref="NodeClient"/>: <c>iostat</c>,
/// <c>sysfs</c>, <c>hotplug</c>, <c>devices</c>): every event on stderr, so stdout carries the
/// command's output alone (a JSON document stays parseable). Akka's default logger writes to
/// stdout: an outside audit found a SIGKILLed node's <c>Disassociated</c> error and its stack
/// trace inside <c>iostat -o JSON</c>'s <c>statistics</c> array. That error, a remoting
/// disassociation, is left out: the command says itself that no node answered. So is what the
/// transport could not read from the address given (a port that is not ActorBlk remoting: an
/// operator audit saw DotNetty's <c>TooLongFrameException</c> and 7 stack lines before the
/// command's own "no ActorBlk node answered"). Whatever else is written is one line, the cause's
/// type and message without its stack.
/// </summary>
internal sealed class ClientLogger : ActorBase, IRequiresMessageQueue<ILoggerMessageQueueSemantics>
{
    /// <summary>The logger's type as <c>akka.loggers</c> names it.</summary>
    public const string TypeName = "ActorBlk.Host.Commands.ClientLogger, actorblk";

    /// <summary>
    /// Whether <paramref name="e"/> is written: all but the disassociation from a node that went
    /// away (Akka.Remote's <c>EndpointDisassociatedException</c>, internal to it, so named) and
    /// what the transport could not read (<see cref="PeerNoiseLimiter.IsTransportNoise"/>). A
    /// refusal by ActorBlk's serializers is shown, on one line: it tells a client and a node of
    /// different versions apart from a node that is not there.
    /// </summary>
    public static bool Shows(LogEvent e) => e is not Error { Cause: { } cause }
        || (cause.GetType().FullName != "Akka.Remote.EndpointDisassociatedException" && !PeerNoiseLimiter.IsTransportNoise(cause));

    /// <summary>
    /// <paramref name="e"/> as one line: Akka's level, time and source, the message, and for an
    /// error the innermost cause's type and message (Akka's own text adds the whole stack).
    /// </summary>
    public static string Format(LogEvent e)
    {
        ArgumentNullException.ThrowIfNull(e);
        var line = $"[{e.LogLevel().ToString().Replace("Level", string.Empty, StringComparison.Ordinal).ToUpperInvariant()}][{e.Timestamp:O}][{e.LogSource}] {e.Message}";
        if (e is Error { Cause: { } cause })
        {
            while (cause.InnerException is not null)
            {
                cause = cause.InnerException;
            }

            line += $" ({cause.GetType().Name}: {cause.Message})";
        }

        return line.ReplaceLineEndings(" ");
    }

    /// <summary>Writes <paramref name="e"/> to stderr, on one line, when it <see cref="Shows"/>.</summary>
    public static void WriteToStandardError(LogEvent e)
    {
        if (Shows(e))
        {
            Console.Error.WriteLine(Format(e));
        }
    }

    /// <inheritdoc />
    protected override bool Receive(object message)
    {
        switch (message)
        {
            case InitializeLogger:
                Sender.Tell(new LoggerInitialized());
                return true;
            case LogEvent e:
                WriteToStandardError(e);
                return true;
            default:
                return false;
        }
    }
}

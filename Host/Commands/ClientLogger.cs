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
/// disassociation, is left out: the command says itself that no node answered.
/// </summary>
internal sealed class ClientLogger : ActorBase, IRequiresMessageQueue<ILoggerMessageQueueSemantics>
{
    /// <summary>The logger's type as <c>akka.loggers</c> names it.</summary>
    public const string TypeName = "ActorBlk.Host.Commands.ClientLogger, actorblk";

    /// <summary>
    /// Whether <paramref name="e"/> is written: all but the disassociation from a node that went
    /// away (Akka.Remote's <c>EndpointDisassociatedException</c>, internal to it, so named).
    /// </summary>
    public static bool Shows(LogEvent e) => e is not Error { Cause: { } cause } || cause.GetType().FullName != "Akka.Remote.EndpointDisassociatedException";

    /// <summary>Writes <paramref name="e"/> to stderr when it <see cref="Shows"/>.</summary>
    public static void WriteToStandardError(LogEvent e)
    {
        if (Shows(e))
        {
            Console.Error.WriteLine(e.ToString());
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

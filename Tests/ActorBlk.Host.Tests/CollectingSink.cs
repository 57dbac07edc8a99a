using Serilog.Core;
using Serilog.Events;

namespace ActorBlk.Host.Tests;

/// <summary>A Serilog sink that keeps every event it is given, for specs of the log pipeline.</summary>
internal sealed class CollectingSink : ILogEventSink
{
    public List<LogEvent> Events { get; } = [];

    public void Emit(LogEvent logEvent) => Events.Add(logEvent);
}

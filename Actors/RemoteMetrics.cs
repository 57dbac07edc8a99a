using System.Diagnostics.Metrics;
using System.Runtime.CompilerServices;
using ActorBlk.Hardware.Queues;

namespace ActorBlk.Actors;

/// <summary>
/// The remote I/O budget's instruments on the <c>ActorBlk</c> meter (<see cref="BlockMetrics.Meter"/>),
/// tagged <c>node</c> (the actor system's address): the bytes I/O messages from the network hold
/// in flight, and the requests answered <c>Resource</c> because that would pass
/// <c>actorblk.remote.max-inflight-io-bytes</c>. Observable, as the other instruments: nothing is
/// recorded per message.
/// </summary>
internal static class RemoteMetrics
{
    private static readonly ConditionalWeakTable<RemoteIoBudget, string> Budgets = new();

    static RemoteMetrics()
    {
        var meter = BlockMetrics.Meter;
        meter.CreateObservableUpDownCounter("actorblk.remote.io_memory", () => PerNode(b => b.InUse), "By", "Bytes held by I/O messages from the network in flight (max-inflight-io-bytes), by node.");
        meter.CreateObservableCounter("actorblk.remote.io_refused", () => PerNode(b => b.Refused), "{request}", "I/O messages from the network answered Resource because the in-flight budget was full, by node.");
    }

    internal static void Add(RemoteIoBudget budget, string node) => Budgets.AddOrUpdate(budget, node);

    internal static void Remove(RemoteIoBudget budget) => Budgets.Remove(budget);

    private static IEnumerable<Measurement<long>> PerNode(Func<RemoteIoBudget, long> value)
    {
        foreach (var (budget, node) in Budgets)
        {
            yield return new Measurement<long>(value(budget), new KeyValuePair<string, object?>("node", node));
        }
    }
}

using Xunit;
using Xunit.Abstractions;
using Xunit.Sdk;

namespace ActorBlk.Testing;

/// <summary>
/// Marks a test collection (its <see cref="CollectionDefinitionAttribute"/> class) or a test class
/// that is a collection of its own as one that runs long: about <see cref="Seconds"/> seconds on
/// the 2-core CI runner. <see cref="LongestFirstCollectionOrderer"/> starts such collections first.
/// The figure orders collections only; no spec depends on it.
/// </summary>
[AttributeUsage(AttributeTargets.Class, Inherited = false)]
public sealed class RunsLongAttribute(int seconds) : Attribute
{
    /// <summary>About how long the collection's tests take one after another, in seconds.</summary>
    public int Seconds { get; } = seconds;
}

/// <summary>
/// Starts the collections marked <see cref="RunsLongAttribute"/> first, longest first, then the
/// others in xunit's own order.
/// </summary>
/// <remarks>
/// xunit's default (conservative) parallel algorithm lets <c>maxParallelThreads</c> tests run at
/// a time and hands the free places out in the order the collections were started, which its
/// default orderer makes arbitrary. A collection whose classes must run one after another (specs
/// that start node processes) is a chain: started late it runs alone at the end of the run, as
/// the Host suite's second chain did for its last 145 s (320 s in all where the work of three
/// places is about 235 s). Started first, the chains run beside the short classes instead: the
/// classic longest-processing-time-first rule for scheduling on parallel machines.
/// </remarks>
public sealed class LongestFirstCollectionOrderer : ITestCollectionOrderer
{
    private const string PerClassPrefix = "Test collection for ";

    private readonly DefaultTestCollectionOrderer _default = new();

    /// <inheritdoc/>
    public IEnumerable<ITestCollection> OrderTestCollections(IEnumerable<ITestCollection> testCollections) =>
        _default.OrderTestCollections(testCollections)
            .Select((collection, index) => (collection, index, seconds: SecondsOf(collection)))
            .OrderByDescending(c => c.seconds)
            .ThenBy(c => c.index)
            .Select(c => c.collection)
            .ToList();

    /// <summary>
    /// The <see cref="RunsLongAttribute"/> figure of a collection's definition class or, for a
    /// class that is a collection of its own, of that class; 0 where there is none.
    /// </summary>
    public static int SecondsOf(ITestCollection collection)
    {
        ArgumentNullException.ThrowIfNull(collection);
        var type = collection.CollectionDefinition;
        if (type is null && collection.DisplayName.StartsWith(PerClassPrefix, StringComparison.Ordinal))
        {
            type = collection.TestAssembly.Assembly.GetType(collection.DisplayName[PerClassPrefix.Length..]);
        }

        var attribute = type?.GetCustomAttributes(typeof(RunsLongAttribute)).FirstOrDefault();
        return attribute?.GetConstructorArguments().OfType<int>().FirstOrDefault() ?? 0;
    }
}

using ActorBlk.Host.Tests.Support;
using ActorBlk.Testing;
using Xunit;
using Xunit.Abstractions;
using Xunit.Sdk;

namespace ActorBlk.Host.Tests;

/// <summary>
/// The suite's own scheduling (README, Set-up): the collections marked <see cref="RunsLongAttribute"/>
/// start first, longest first, and the others keep xunit's order. The collections are the ones
/// xunit itself makes for these classes (its collection-per-class factory), so a change in how
/// xunit names or defines them fails here rather than silently undoing the order.
/// </summary>
public sealed class TestOrderSpec
{
    private static ITestCollection CollectionOf(Type type)
    {
        var assembly = new TestAssembly(Reflector.Wrap(type.Assembly));
        return new CollectionPerClassTestCollectionFactory(assembly, new NullMessageSink()).Get(Reflector.Wrap(type));
    }

    [Fact]
    public void Marked_collections_start_longest_first_and_the_others_keep_xunits_order()
    {
        var free = new[] { typeof(DisassociationFilterSpec), typeof(CommandLineSpec), typeof(IostatSpec), typeof(PrometheusSpec) }
            .Select(CollectionOf).ToList();
        var marked = new[] { typeof(BenchSpec), typeof(ServeSpec), typeof(ClusterBenchSpec), typeof(SecureServeSpec) }
            .Select(CollectionOf).ToList();

        var ordered = new LongestFirstCollectionOrderer().OrderTestCollections(free.Concat(marked)).ToList();

        // ClusterBenchSpec's collection is the cluster chain (260), ServeSpec's the serve chain
        // (125), SecureServeSpec's the own-resource chain (90), BenchSpec a class of its own (75).
        Assert.Equal(
            [ClusterProcessesCollection.Name, ServeProcessesCollection.Name, OwnResourceProcessesCollection.Name, $"Test collection for {typeof(BenchSpec).FullName}"],
            ordered.Take(4).Select(c => c.DisplayName));
        Assert.Equal([260, 125, 90, 75], ordered.Take(4).Select(LongestFirstCollectionOrderer.SecondsOf));
        Assert.Equal(
            new DefaultTestCollectionOrderer().OrderTestCollections(free).Select(c => c.UniqueID),
            ordered.Skip(4).Select(c => c.UniqueID));
        Assert.All(ordered.Skip(4), c => Assert.Equal(0, LongestFirstCollectionOrderer.SecondsOf(c)));
    }
}

"""The waiting faces in groups, so a reviewer judges a whole group with one verdict.

Waiting faces are clustered by descriptor together with the reviewed faces (the anchors), with scikit-learn's
HDBSCAN (parameters in params.yaml `review:`, chosen by benchmarks/review_keys.py). Two faces of one photo are two
people, so they never share a cluster unless the photo is declared a collage: of a photo's faces in one cluster
only the one nearest the cluster's centre stays (an anchor first: its label is known), the others leave it.
Faces no cluster takes are grouped by their own proposal ("leftovers"), at most `group_size` to a group; one
proposed as an actor never holds two faces of one (non-collage) photo.

A group's proposal comes from the anchors: the people it may be are the anchors' labels (the actors, and
UNKNOWN for reviewed strangers), and a face is that person when its distance to the person's nearest anchor is
within the champion's open-set threshold (the nearest_face rule, bbt/model/openset.py). Per group: the actor with
the smallest median distance over the members, if within the threshold; else "not one of the four" if the
strangers' faces are within it; else "someone new".
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import HDBSCAN

from bbt import UNKNOWN

NOT_ONE = "not one of the four"
SOMEONE_NEW = "someone new"
STRANGER = "stranger"  # the verdict for both: review/corrections.csv has no identities for strangers


@dataclass(frozen=True)
class ClusterSettings:
    """How faces are grouped (params.yaml `review:`, bbt.config.ReviewParams)."""

    min_cluster_size: int = 5
    min_samples: int = 2
    group_size: int = 48  # the most faces one group shows
    outlier_distance: float = 0.5  # a member this far from its group's centre is marked as an odd one out
    collages: frozenset[str] = frozenset()  # photos whose faces may share a cluster (the same person twice)


@dataclass(frozen=True)
class Proposal:
    verdict: str  # an actor, or STRANGER
    says: str  # "raj", NOT_ONE or SOMEONE_NEW
    distance: float  # the median distance to that person's nearest anchor
    threshold: float


@dataclass(frozen=True)
class Group:
    kind: str  # "cluster" or "leftovers"
    members: tuple[int, ...]  # indices into the waiting faces, nearest the centre first
    proposal: Proposal
    agreement: float  # share of the members whose own proposal is the group's
    outliers: tuple[int, ...]  # members farther than outlier_distance from the group's centre

    def order(self) -> tuple[int, float, float, tuple[int, ...]]:
        """Bigger groups first; among equals the less sure proposal first: fewer members agree with it, or its
        distance is nearer the threshold."""
        closeness = -abs(self.proposal.threshold - self.proposal.distance)
        return -len(self.members), self.agreement, -closeness, self.members


def distances_to_people(X: np.ndarray, anchors: np.ndarray, labels: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(the people, sorted; a face x person matrix of the distance to that person's nearest anchor)."""
    people = sorted(set(labels.tolist()))
    all_distances = np.linalg.norm(X[:, None, :] - anchors[None, :, :], axis=2)
    return people, np.stack([all_distances[:, labels == person].min(axis=1) for person in people], axis=1)


def propose(distances: np.ndarray, people: list[str], actors: tuple[str, ...], threshold: float) -> Proposal:
    """The proposal for faces with these distances to each person (rows: faces)."""
    median = np.median(distances, axis=0)
    candidates = [(float(median[i]), person) for i, person in enumerate(people) if person in actors]
    if candidates:
        distance, actor = min(candidates)
        if distance <= threshold:
            return Proposal(actor, actor, distance, threshold)
    if UNKNOWN in people and median[people.index(UNKNOWN)] <= threshold:
        return Proposal(STRANGER, NOT_ONE, float(median[people.index(UNKNOWN)]), threshold)
    return Proposal(STRANGER, SOMEONE_NEW, float(median.min()), threshold)


def cluster_labels(X: np.ndarray, images: list[str], settings: ClusterSettings,
                   known: np.ndarray | None = None) -> np.ndarray:
    """HDBSCAN's cluster per face (-1: none), with the one-photo rule applied. `known` marks the anchors, which
    a photo keeps in a cluster before its waiting faces."""
    if len(X) < max(2, settings.min_cluster_size):
        return np.full(len(X), -1)
    labels = HDBSCAN(min_cluster_size=settings.min_cluster_size, min_samples=settings.min_samples,
                     copy=True).fit_predict(X)
    return one_face_per_photo(X, images, labels, settings.collages,
                              np.zeros(len(X), bool) if known is None else known)


def one_face_per_photo(X: np.ndarray, images: list[str], labels: np.ndarray, collages: frozenset[str],
                       known: np.ndarray) -> np.ndarray:
    """Of one (non-collage) photo's faces in one cluster, keep the anchor or else the face nearest the cluster's
    centre; the others are taken out of the cluster (-1)."""
    labels = labels.copy()
    for cluster in sorted(set(labels.tolist()) - {-1}):
        members = np.flatnonzero(labels == cluster)
        centre = X[members].mean(axis=0)
        by_photo: dict[str, list[int]] = defaultdict(list)
        for n in members:
            if images[n] not in collages:
                by_photo[images[n]].append(int(n))
        for faces in by_photo.values():
            if len(faces) > 1:
                keep = min(faces, key=lambda n: (not known[n], float(np.linalg.norm(X[n] - centre)), n))
                labels[[n for n in faces if n != keep]] = -1
    return labels


def group_faces(waiting: np.ndarray, waiting_images: list[str], anchors: np.ndarray, anchor_labels: np.ndarray,
                anchor_images: list[str], actors: tuple[str, ...], threshold: float,
                settings: ClusterSettings) -> list[Group]:
    """Every waiting face in exactly one group, in the order a reviewer meets them: clusters by size, the less
    sure first among equals, then the leftovers."""
    if len(waiting) == 0:
        return []
    X = np.vstack([anchors, waiting]) if len(anchors) else waiting
    known = np.arange(len(X)) < len(anchors)
    labels = cluster_labels(X, [*anchor_images, *waiting_images], settings, known)[len(anchors):]
    people, distances = distances_to_people(waiting, anchors, anchor_labels)
    own = [propose(distances[[n]], people, actors, threshold) for n in range(len(waiting))]

    def make(kind: str, members: list[int]) -> Group:
        centre = waiting[members].mean(axis=0)
        far = np.linalg.norm(waiting[members] - centre, axis=1)
        ordered = [members[i] for i in np.lexsort((members, far))]
        proposal = propose(distances[members], people, actors, threshold)
        agree = sum((own[n].verdict, own[n].says) == (proposal.verdict, proposal.says) for n in members)
        outliers = tuple(m for m, d in zip(members, far) if d > settings.outlier_distance)
        return Group(kind, tuple(ordered), proposal, agree / len(members), tuple(sorted(outliers)))

    clusters = [make("cluster", np.flatnonzero(labels == c).tolist()) for c in sorted(set(labels.tolist()) - {-1})]
    clusters.sort(key=Group.order)
    alone: dict[tuple[str, str], list[int]] = defaultdict(list)
    for n in np.flatnonzero(labels == -1).tolist():
        alone[(own[n].verdict, own[n].says)].append(n)
    leftovers = []
    for (verdict, _), faces in sorted(alone.items()):
        faces.sort(key=lambda n: (own[n].distance, n))
        # One actor's name for two faces of one photo would be wrong; "stranger" for both is not.
        one_person = verdict != STRANGER
        leftovers += [make("leftovers", chunk) for chunk in
                      chunks(faces, waiting_images, settings.group_size, settings.collages if one_person else None)]
    leftovers.sort(key=Group.order)
    return clusters + leftovers


def chunks(faces: list[int], images: list[str], size: int, collages: frozenset[str] | None) -> list[list[int]]:
    """The faces in order, in chunks of at most `size`; with `collages` given, no chunk holds two faces of one
    photo that is not among them (a face goes to the first chunk with room and without its photo)."""
    out: list[list[int]] = []
    photos: list[set[str]] = []
    for n in faces:
        image = images[n]
        shared = collages is not None and image not in collages
        at = next((i for i, chunk in enumerate(out) if len(chunk) < size and not (shared and image in photos[i])),
                  None)
        if at is None:
            out.append([])
            photos.append(set())
            at = len(out) - 1
        out[at].append(n)
        photos[at].add(image)
    return out

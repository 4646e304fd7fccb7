// bidsbridge: links from Orthanc Explorer to the plugin's status page (/bidsbridge/ui/).
// Orthanc Explorer lives at <orthanc>/app/explorer.html, hence the relative "../bidsbridge/ui/".
$('#lookup').live('pagebeforecreate', function() {
  if ($('#bidsbridge-status').length) return;
  var b = $('<a>')
    .attr('id', 'bidsbridge-status')
    .attr('data-role', 'button')
    .attr('data-icon', 'gear')
    .attr('data-theme', 'e')
    .attr('rel', 'external')
    .attr('href', '../bidsbridge/ui/index.html')
    .text('bidsbridge: conversions, failures, rules');
  var content = $(this).find('div[data-role="content"]').first();
  (content.length ? content : $(this)).prepend(b);
});

$('#series').live('pagebeforecreate', function() {
  var b = $('<a>')
    .attr('id', 'bidsbridge-series')
    .attr('data-role', 'button')
    .attr('data-icon', 'gear')
    .attr('data-theme', 'e')
    .attr('href', '#')
    .text('bidsbridge: conversion and QC');
  b.insertBefore($('#series-delete').parent().parent());
  b.click(function() {
    if ($.mobile.pageData) {
      window.location.href = '../bidsbridge/ui/index.html#series/' + encodeURIComponent($.mobile.pageData.uuid);
    }
  });
});

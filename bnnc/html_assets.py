"""The colours, style sheet and script of the HTML report (bnnc.html_report), kept inline so
the page needs nothing from the network."""

COLORS = {"xnor": "#2b8a3e", "binary-weight": "#1971c2", "ternary": "#9c36b5", "float": "#d9480f"}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#212529;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dee2e6}
.sub,.note{color:#6c757d}.cards{display:flex;flex-wrap:wrap;gap:10px;margin-top:12px}
.card{border:1px solid #dee2e6;border-radius:6px;padding:8px 12px;min-width:130px}
.card .k{color:#6c757d;font-size:12px}.card .v{font-size:17px;font-weight:600}
.legend span{margin-right:16px;white-space:nowrap}.legend i{display:inline-block;width:12px;height:12px;
border-radius:3px;margin-right:5px;vertical-align:-1px}
.diagram{max-height:900px;overflow:auto;border:1px solid #dee2e6;border-radius:6px}
.diagram path{stroke:#adb5bd;stroke-width:1.2;fill:none}.diagram .n{font-size:11px;font-weight:600}
.diagram .o{font-size:10px}.diagram .hl rect{stroke:#fab005;stroke-width:4}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:12px}
th,td{border-bottom:1px solid #e9ecef;padding:3px 8px;text-align:left;vertical-align:top;white-space:nowrap}
th{background:#f8f9fa;cursor:pointer;position:sticky;top:0}tr.hl td{background:#fff3bf}
td:last-child{white-space:normal;min-width:220px}
.badge{color:#fff;border-radius:4px;padding:0 6px}.charts svg{display:block;margin-bottom:18px}
.chart .t{font-weight:600;font-size:13px}.chart .l,.chart .v{font-size:10px;fill:#495057}
code{background:#f1f3f5;padding:0 3px;border-radius:3px}
"""

SCRIPT = """
(function(){
  var status=document.getElementById('bnnc-status');
  window.onerror=function(msg){status.setAttribute('data-status','error: '+msg);status.textContent='error: '+msg;};
  function cellValue(td){
    var t=td.textContent.trim(), n=parseFloat(t.replace(/,/g,'').replace('%',''));
    return (t!=='' && !isNaN(n) && /^[-\\d.,%\\s]+$/.test(t)) ? n : t.toLowerCase();
  }
  function sortBy(table, col, th){
    var body=table.tBodies[0], rows=Array.prototype.slice.call(body.rows);
    var dir=th.getAttribute('data-dir')==='asc'?-1:1; th.setAttribute('data-dir',dir===1?'asc':'desc');
    rows.sort(function(a,b){
      var x=cellValue(a.cells[col]), y=cellValue(b.cells[col]);
      if(typeof x!==typeof y){x=String(x);y=String(y);}
      return x<y?-dir:x>y?dir:0;});
    rows.forEach(function(r){body.appendChild(r);});
  }
  document.querySelectorAll('table.sortable').forEach(function(table){
    Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,i){
      th.addEventListener('click',function(){sortBy(table,i,th);});});
  });
  var boxes={};
  document.querySelectorAll('.diagram .node').forEach(function(g){boxes[g.getAttribute('data-name')]=g;});
  document.querySelectorAll('tr[data-name]').forEach(function(tr){
    var g=boxes[tr.getAttribute('data-name')]; if(!g) return;
    tr.addEventListener('mouseenter',function(){g.classList.add('hl');});
    tr.addEventListener('mouseleave',function(){g.classList.remove('hl');});
    tr.addEventListener('click',function(){g.scrollIntoView({block:'center',inline:'center'});});
    g.addEventListener('click',function(){tr.classList.toggle('hl');tr.scrollIntoView({block:'nearest'});});
  });
  status.setAttribute('data-status','ok');
})();
"""
